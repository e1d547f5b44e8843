"""E-utilities client against the fake server (real response files) in tests/fixtures_ingest.py."""

from __future__ import annotations

import itertools
import json
import math
import socket
import time

import pytest

from ingest.eutils import EutilsClient, QueryProgress, RateLimiter, parse_date
from pubmind.errors import InvalidInput, UpstreamError
from pubmind.records import Article

pytestmark = pytest.mark.network


def _pmids(batches) -> list[int]:
    return [r.pmid for b in batches for r in b if isinstance(r, Article)]


def test_search_uses_history_and_sends_identity(eutils_settings, fake_eutils, metapub_corpus) -> None:
    res = EutilsClient(eutils_settings).search("all[sb]", retmax=5)
    assert res.count == len(metapub_corpus)
    assert len(metapub_corpus) == 163
    assert res.webenv
    assert res.webenv.startswith("MCID_fake")
    assert res.query_key == "1"
    assert res.ids == sorted(metapub_corpus, reverse=True)[:5]
    util, params = fake_eutils.log[-1]
    assert util == "esearch"
    assert params["usehistory"] == "y"
    assert params["tool"] == "pubmind"
    assert params["email"] == "test@example.org"


def test_iter_query_pages_the_history_in_batches(eutils_settings, fake_eutils, metapub_corpus, tmp_path) -> None:
    batches = list(EutilsClient(eutils_settings).iter_query("all[sb]", state_dir=tmp_path))
    got = _pmids(batches)
    assert sorted(got) == sorted(metapub_corpus)
    assert len(got) == len(set(got))
    assert [len(b) for b in batches] == [20] * 8 + [3]
    assert fake_eutils.counts["efetch"] == math.ceil(163 / 20)
    starts = [int(p["retstart"]) for u, p in fake_eutils.log if u == "efetch"]
    assert starts == list(range(0, 163, 20))
    efetches = [p for u, p in fake_eutils.log if u == "efetch"]
    assert {p["retmode"] for p in efetches} == {"xml"}
    assert all(p["WebEnv"].startswith("MCID_fake") for p in efetches)
    state = json.loads(next(tmp_path.glob("query-*.json")).read_text())
    assert state["complete"]
    assert state["fetched"] == 163


def test_date_windows_split_past_the_paging_limit(eutils_settings, fake_eutils, metapub_corpus, tmp_path) -> None:
    fake_eutils.window_limit = 10  # the server refuses to page past 10, like PubMed past 9,999
    client = EutilsClient(eutils_settings)
    client.window_limit = 10
    batches = list(client.iter_query("all[sb]", mindate="1900", maxdate="2030/12", state_dir=tmp_path))
    got = _pmids(batches)
    assert sorted(got) == sorted(metapub_corpus)
    assert len(got) == len(set(got))
    state = QueryProgress.load(next(tmp_path.glob("query-*.json")))
    assert state is not None
    assert len(state.windows) > 16
    assert all(0 < w.count <= 10 for w in state.windows)
    assert sum(w.count for w in state.windows) == 163
    assert all(p["datetype"] == "pdat" for u, p in fake_eutils.log if u == "esearch")


def test_a_single_day_over_the_limit_is_a_clear_error(eutils_settings, fake_eutils) -> None:
    client = EutilsClient(eutils_settings)
    client.window_limit = 5  # 8 corpus records are dated 2023/01/01
    with pytest.raises(UpstreamError, match="single day 2023/01/01"):
        list(client.iter_query("all[sb]", mindate="2023/01/01", maxdate="2023/01/01"))


def test_max_records_and_resuming_a_capped_run(eutils_settings, fake_eutils, metapub_corpus, tmp_path) -> None:
    got = _pmids(EutilsClient(eutils_settings).iter_query("all[sb]", max_records=45, state_dir=tmp_path))
    assert len(got) == 45
    assert [int(p["retmax"]) for u, p in fake_eutils.log if u == "efetch"] == [20, 20, 5]
    fake_eutils.log.clear()
    more = _pmids(EutilsClient(eutils_settings).iter_query("all[sb]", max_records=100, state_dir=tmp_path))
    assert [int(p["retstart"]) for u, p in fake_eutils.log if u == "efetch"] == [45, 65, 85]
    assert len(more) == 55
    assert sorted(got + more) == sorted(metapub_corpus, reverse=True)[:100][::-1]


def test_resume_after_a_crash_refetches_only_the_unapplied_batch(eutils_settings, fake_eutils, metapub_corpus,
                                                                  tmp_path) -> None:
    gen = EutilsClient(eutils_settings).iter_query("all[sb]", state_dir=tmp_path)
    applied = _pmids([next(gen)])  # batch 1 applied
    next(gen)  # batch 2 fetched, then the consumer dies before applying it
    gen.close()
    state = QueryProgress.load(next(tmp_path.glob("query-*.json")))
    assert state is not None
    assert state.fetched == 20
    assert not state.complete
    fake_eutils.log.clear()
    rest = _pmids(EutilsClient(eutils_settings).iter_query("all[sb]", state_dir=tmp_path))
    assert next(int(p["retstart"]) for u, p in fake_eutils.log if u == "efetch") == 20
    assert sorted(applied + rest) == sorted(metapub_corpus)


def test_fetch_ids_batches_and_skips_missing(eutils_settings, fake_eutils, metapub_corpus) -> None:
    ids = [*sorted(metapub_corpus)[:50], 37909814]  # the last is the real 'missing PMID' case
    recs = EutilsClient(eutils_settings).fetch_ids(ids)
    assert sorted(r.pmid for r in recs) == sorted(metapub_corpus)[:50]
    assert fake_eutils.counts["efetch"] == 3  # batch_size 20


def test_long_id_lists_are_posted(eutils_settings, fake_eutils, metapub_corpus) -> None:
    cfg = eutils_settings.eutils.model_copy(update={"batch_size": 300})
    ids = [*sorted(metapub_corpus), *range(1, 101)]  # 263 ids: biopython POSTs lists of 200+
    recs = EutilsClient(eutils_settings.model_copy(update={"eutils": cfg})).fetch_ids(ids)
    assert len(recs) == 163
    assert fake_eutils.counts["POST"] == 1
    assert fake_eutils.counts["GET"] == 0


def test_429_and_500_are_retried(eutils_settings, fake_eutils) -> None:
    fake_eutils.fail_next(429, 500)
    client = EutilsClient(eutils_settings)
    assert client.search("all[sb]").count == 163
    assert fake_eutils.counts["esearch"] == 3
    assert client.requests == 3


def test_exhausted_retries_raise(eutils_settings, fake_eutils) -> None:
    fake_eutils.fail_next(503, 503, 503, 503)
    with pytest.raises(UpstreamError, match=r"gave up after 3 attempts \(2 retries\).*HTTP 503"):
        EutilsClient(eutils_settings).search("all[sb]")
    assert fake_eutils.counts["esearch"] == 3


def test_client_errors_are_not_retried(eutils_settings, fake_eutils) -> None:
    fake_eutils.fail_next(400)
    with pytest.raises(UpstreamError, match="HTTP 400"):
        EutilsClient(eutils_settings).search("all[sb]")
    assert fake_eutils.counts["esearch"] == 1


def test_network_errors_are_retried_then_raised(eutils_settings) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = eutils_settings.eutils.model_copy(update={"base_url": f"http://127.0.0.1:{port}/"})
    client = EutilsClient(eutils_settings.model_copy(update={"eutils": cfg}))
    with pytest.raises(UpstreamError, match=r"gave up after 3 attempts.*URLError"):
        client.search("x")
    assert client.requests == 3


def test_errorlist_and_error_responses(eutils_settings, fake_eutils) -> None:
    client = EutilsClient(eutils_settings)
    with pytest.raises(InvalidInput, match="PhraseNotFound: abcXYZ"):
        client.search("abcXYZ")
    with pytest.raises(UpstreamError, match="Neither query_key nor id specified"):
        client.fetch_history("MCID_unknown", "1", 0, 10)


def test_rate_limiter_spacing_on_a_fake_clock() -> None:
    now = [100.0]
    starts: list[float] = []

    def sleep(s: float) -> None:
        assert s > 0
        now[0] += s

    lim = RateLimiter(3.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(10):
        lim.wait()
        starts.append(now[0])
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) == pytest.approx(1 / 3)
    now[0] += 5  # idle time is not banked into a burst beyond one request
    lim.wait()
    t = now[0]
    lim.wait()
    assert now[0] - t == pytest.approx(1 / 3)


def test_rate_limit_defaults_and_real_spacing(eutils_settings, fake_eutils) -> None:
    base = eutils_settings.eutils
    mk = lambda **kw: EutilsClient(eutils_settings.model_copy(update={"eutils": base.model_copy(update=kw)}))  # noqa: E731
    assert mk(requests_per_second=None, api_key="").limiter.interval == pytest.approx(1 / 3)
    assert mk(requests_per_second=None, api_key="k").limiter.interval == pytest.approx(1 / 10)
    client = mk(requests_per_second=20.0)
    t = time.monotonic()
    for _ in range(6):
        client.search("all[sb]", usehistory=False)
    assert time.monotonic() - t >= 5 / 20 - 0.01


def test_parse_date() -> None:
    assert str(parse_date("2020", end=False)) == "2020-01-01"
    assert str(parse_date("2020/02", end=True)) == "2020-02-29"
    assert str(parse_date("2019-12-31", end=True)) == "2019-12-31"
    with pytest.raises(InvalidInput, match="mindate"):
        parse_date("last week", end=False)
