"""Searcher over a real store + index + MiniLM: modes, fusion, filters before top-k, one hit per PMID,
reranking, bad input; the ``search`` and ``eval retrieval`` commands."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pubmind.errors import InvalidInput
from pubmind.records import AbstractSection, Article, CommentCorrection, MeshHeading
from retrieval.search import Hit, Searcher
from retrieval.store import Filters
from tests.conftest import settings_at

TOPICS = {  # pmid: (title, abstract, journal, year, mesh (descriptor, major), pubtypes, language)
    1001: ("Statin therapy and LDL cholesterol lowering in primary prevention",
           "Atorvastatin reduced low-density lipoprotein cholesterol by 45% and major cardiovascular events "
           "in adults without prior heart disease.", "Lancet", 2015,
           [("Hydroxymethylglutaryl-CoA Reductase Inhibitors", True), ("Cholesterol, LDL", False)],
           ["Randomized Controlled Trial"], "eng"),
    1002: ("Metformin and gestational diabetes outcomes",
           "Pregnant women with gestational diabetes treated with metformin had less weight gain and similar "
           "neonatal outcomes compared with insulin.", "Diabetes Care", 2012,
           [("Diabetes, Gestational", True), ("Metformin", False)], ["Clinical Trial"], "eng"),
    1003: ("Influenza vaccination of health care workers",
           "Vaccinating hospital staff against influenza reduced nosocomial influenza among elderly "
           "inpatients.", "Vaccine", 2009, [("Influenza Vaccines", True)], ["Journal Article"], "eng"),
    1004: ("Deep brain stimulation for Parkinson disease",
           "Subthalamic nucleus stimulation improved motor fluctuations and dyskinesia in advanced Parkinson "
           "disease.", "Brain", 2004, [("Parkinson Disease", True), ("Deep Brain Stimulation", False)],
           ["Review"], "eng"),
    1005: ("Antibiotic prophylaxis in caesarean section",
           "Single-dose cefazolin before skin incision lowered surgical site infection after caesarean "
           "delivery.", "Obstetrics and Gynecology", 2010, [("Antibiotic Prophylaxis", True)],
           ["Randomized Controlled Trial"], "eng"),
    1006: ("Sommeil et maladie d'Alzheimer",
           "Sleep fragmentation and amyloid deposition were associated in older adults with mild cognitive "
           "impairment.", "Revue Neurologique", 2018, [("Alzheimer Disease", True)], ["Journal Article"], "fre"),
    1007: ("Retracted: stem cells cure heart failure",
           "Intracoronary bone marrow stem cells restored ejection fraction in heart failure.", "Cardiology",
           2011, [("Heart Failure", True)], ["Journal Article", "Retracted Publication"], "eng"),
}


def long_abstract() -> tuple[AbstractSection, ...]:
    """Four sections about one subject: several chunks at max_tokens=128."""
    s = ("Chronic kidney disease patients on haemodialysis were followed for cardiovascular outcomes. "
         "Vascular calcification progressed faster with higher serum phosphate. ")
    return tuple(AbstractSection(s * 3, lab) for lab in ("BACKGROUND", "METHODS", "RESULTS", "CONCLUSIONS"))


def articles() -> list[Article]:
    out = []
    for pmid, (title, abstract, journal, year, mesh, ptypes, lang) in TOPICS.items():
        cc = (CommentCorrection("RetractionIn", 9),) if "Retracted Publication" in ptypes else ()
        out.append(Article(pmid=pmid, title=title, abstract=(AbstractSection(abstract),), journal=journal,
                           year=year, mesh=tuple(MeshHeading(d, major=m) for d, m in mesh),
                           publication_types=tuple(ptypes), languages=(lang,), comments_corrections=cc))
    out.append(Article(pmid=1100, title="Phosphate, vascular calcification and dialysis", abstract=long_abstract(),
                       journal="Kidney International", year=2016, languages=("eng",)))
    # 12 diabetes articles: 2000-2011 (one per year), all in "Diabetologia"
    for i in range(12):
        out.append(Article(pmid=2000 + i, title=f"Glycaemic control cohort {i}",
                           abstract=(AbstractSection(f"HbA1c and insulin dosing in type 2 diabetes cohort {i} "
                                                     f"over {i + 1} years of follow-up."),),
                           journal="Diabetologia", journal_iso="Diabetologia", year=2000 + i,
                           mesh=(MeshHeading("Diabetes Mellitus, Type 2", major=i % 2 == 0),),
                           publication_types=("Journal Article",), languages=("eng",)))
    # 6 off-topic 1990 articles: the only 1990 ones
    for i, topic in enumerate(["fracture healing in rats", "otitis media in toddlers", "malaria bed nets",
                               "asthma inhaler adherence", "cataract surgery outcomes", "dental caries fluoride"]):
        out.append(Article(pmid=3000 + i, title=topic.capitalize(), journal="Old Journal", year=1990,
                           abstract=(AbstractSection(f"A study of {topic} outcomes."),), languages=("eng",)))
    return out


@pytest.fixture(scope="module")
def corpus_settings(tmp_path_factory: pytest.TempPathFactory, embedder):
    """A home with the articles above indexed by the real MiniLM (test preset)."""
    from retrieval.indexer import Indexer

    home = tmp_path_factory.mktemp("search") / "home"
    s = settings_at(home)
    with Indexer(s, embedder) as ix:
        ix.apply(articles(), progress=False)
    return s


@pytest.fixture(scope="module")
def searcher(corpus_settings, embedder):
    from retrieval.index import VectorIndex
    from retrieval.store import CorpusStore

    s = corpus_settings
    store = CorpusStore(s.corpus_db)
    sr = Searcher(s, store, VectorIndex.open(s.index_dir, s, embedder.fingerprint, readonly=True), embedder)
    yield sr
    store.close()


def with_retrieval(sr: Searcher, **kw) -> Searcher:
    s = sr.settings.model_copy(update={"retrieval": sr.settings.retrieval.model_copy(update=kw)})
    return Searcher(s, sr.store, sr.index, sr.embedder, sr.reranker)


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
@pytest.mark.parametrize(("query", "pmid"), [
    ("statins lower LDL cholesterol", 1001),
    ("metformin versus insulin in pregnancy diabetes", 1002),
    ("flu shots for hospital staff", 1003),
    ("subthalamic stimulation Parkinson", 1004),
])
def test_modes_find_the_topical_article(searcher: Searcher, mode: str, query: str, pmid: int) -> None:
    hits = searcher.search(query, k=3, mode=mode)
    assert hits[0].pmid == pmid
    h = hits[0]
    assert h.title == TOPICS[pmid][0]
    assert h.journal == TOPICS[pmid][2]
    assert h.year == TOPICS[pmid][3]
    assert h.snippet == TOPICS[pmid][1]  # chunk text without the title prefix
    assert (h.dense is not None) == (mode != "lexical")
    assert (h.lexical is not None) == (mode != "dense")
    assert [x.score for x in hits] == sorted((x.score for x in hits), reverse=True)


def test_hybrid_keeps_component_scores(searcher: Searcher) -> None:
    for fusion in ("convex", "rrf"):
        hits = with_retrieval(searcher, fusion=fusion).search("statins lower LDL cholesterol", k=5, mode="hybrid")
        top = hits[0]
        assert top.pmid == 1001
        assert top.fused == top.score
        assert top.dense_rank == 1
        assert top.lexical_rank == 1
        assert top.dense > 0.3
        assert top.lexical > 0
        # exact dense score for every candidate, even lexical-only ones
        assert all(h.dense is not None for h in hits)
    rrf = with_retrieval(searcher, fusion="rrf").search("statins lower LDL cholesterol", k=1, mode="hybrid")[0]
    r = searcher.settings.retrieval
    assert rrf.score == pytest.approx(r.dense_weight / (r.rrf_k + 1) + r.lexical_weight / (r.rrf_k + 1))


def test_one_hit_per_pmid_is_its_best_chunk(searcher: Searcher) -> None:
    n_chunks = len(searcher.store.chunk_ids_of([1100])[1100])
    assert n_chunks >= 3
    for mode in ("dense", "lexical", "hybrid"):
        hits = searcher.search("serum phosphate vascular calcification haemodialysis", k=10, mode=mode)
        pmids = [h.pmid for h in hits]
        assert pmids[0] == 1100
        assert len(pmids) == len(set(pmids))
    per_chunk = with_retrieval(searcher, one_per_pmid=False).search(
        "serum phosphate vascular calcification haemodialysis", k=10, mode="dense")
    assert [h.pmid for h in per_chunk[:n_chunks]] == [1100] * n_chunks
    assert len({h.chunk_id for h in per_chunk}) == len(per_chunk)


@pytest.mark.parametrize("mode", ["dense", "hybrid", "lexical"])
def test_filter_applies_before_top_k(searcher: Searcher, mode: str) -> None:
    q = "type 2 diabetes insulin HbA1c outcomes"
    # the six 1990 articles are off-topic: none is in the unfiltered top 10
    assert all(h.year != 1990 for h in searcher.search(q, k=10, mode=mode))
    hits = searcher.search(q, k=5, mode=mode, filters={"year_from": 1990, "year_to": 1990})
    assert len(hits) == 5
    assert {h.year for h in hits} == {1990}
    assert len(searcher.search(q, k=10, mode=mode, filters={"year_to": 1990})) == 6  # only 6 exist


@pytest.mark.parametrize(("filters", "expected"), [
    ({"year_from": 2005, "year_to": 2007}, {2005, 2006, 2007}),
    ({"journals": ["diabetologia"]}, {2000 + i for i in range(12)}),
    ({"mesh": ["Diabetes Mellitus, Type 2"], "mesh_major_only": True}, {2000 + i for i in range(0, 12, 2)}),
    ({"mesh": ["diabetes, gestational"]}, {1002}),
    ({"publication_types": ["Randomized Controlled Trial"]}, {1001, 1005}),
    ({"languages": ["fre"]}, {1006}),
])
def test_each_filter(searcher: Searcher, filters: dict, expected: set[int]) -> None:
    hits = searcher.search("diabetes treatment outcomes", k=20, mode="hybrid", filters=filters)
    got = {h.year for h in hits} if "year_from" in filters else {h.pmid for h in hits}
    assert got == expected


def test_exclude_retracted(searcher: Searcher) -> None:
    q = "stem cells for heart failure"
    assert searcher.search(q, k=1)[0].pmid == 1007
    hits = searcher.search(q, k=50, filters=Filters(exclude_retracted=True))
    assert hits
    assert 1007 not in {h.pmid for h in hits}


def test_filter_matching_nothing_returns_empty(searcher: Searcher) -> None:
    assert searcher.search("diabetes", k=5, filters={"journals": ["No Such Journal"]}) == []


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"query": ""}, "query"),
    ({"query": "   \n"}, "query"),
    ({"query": "x" * 100_000}, "query"),
    ({"k": 0}, "k"),
    ({"k": -3}, "k"),
    ({"k": 101}, "k"),
    ({"mode": "semantic"}, "mode"),
    ({"filters": {"year": 2001}}, "filters.year"),
    ({"filters": {"year_from": 2010, "year_to": 2001}}, "filters.year_from"),
    ({"filters": {"year_from": "recent"}}, "filters"),
])
def test_bad_input(searcher: Searcher, kwargs: dict, param: str) -> None:
    args = {"query": "diabetes", "k": 5, "mode": "hybrid", **kwargs}
    with pytest.raises(InvalidInput) as e:
        searcher.search(**args)
    assert e.value.param == param
    bad = next(iter(kwargs.values()))
    if isinstance(bad, int | str) and len(str(bad)) < 20 and str(bad).strip():
        assert str(bad) in e.value.message  # the message names the bad value


class KeywordReranker:
    """Scores a passage by whether it mentions 'cefazolin': must move 1005 to the top."""

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, pairs, **kw) -> np.ndarray:
        self.calls += 1
        return np.array([float("cefazolin" in p.lower()) for _, p in pairs])


def test_reranker_reorders(searcher: Searcher) -> None:
    q = "statins lower LDL cholesterol"
    plain = searcher.search(q, k=10)
    rr = KeywordReranker()
    hits = Searcher(searcher.settings, searcher.store, searcher.index, searcher.embedder, rr).search(q, k=10)
    assert rr.calls == 1
    assert plain[0].pmid == 1001
    assert hits[0].pmid == 1005
    assert hits[0].rerank == 1.0
    assert hits[0].score == 1.0
    assert hits[1].pmid == 1001
    assert hits[1].rerank == 0.0
    assert hits[1].fused is not None


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory):
    """A random 2-layer BERT with one output label + MiniLM's tokenizer, loaded as a CrossEncoder."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from retrieval.embed import BUNDLED_MINILM, resolve_model

    path = tmp_path_factory.mktemp("ce")
    tok = AutoTokenizer.from_pretrained(resolve_model(BUNDLED_MINILM))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, num_labels=1)
    BertForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return CrossEncoder(str(path), device="cpu")


def test_cross_encoder_reranking(searcher: Searcher, tiny_cross_encoder, corpus_settings) -> None:
    q = "diabetes treatment outcomes"
    plain = searcher.search(q, k=8)
    s = corpus_settings.model_copy(update={"retrieval": corpus_settings.retrieval.model_copy(update={"rerank_top": 8})})
    hits = Searcher(s, searcher.store, searcher.index, searcher.embedder, tiny_cross_encoder).search(q, k=8)
    assert {h.pmid for h in hits} == {h.pmid for h in plain}  # same candidates, new order
    texts = searcher.store.chunk_text([h.chunk_id for h in hits])
    expect = tiny_cross_encoder.predict([(q, texts[h.chunk_id]) for h in hits])
    assert [h.rerank for h in hits] == pytest.approx(expect.tolist(), abs=1e-5)
    assert [h.rerank for h in hits] == sorted((h.rerank for h in hits), reverse=True)
    assert [h.pmid for h in hits] != [h.pmid for h in plain]


def test_hit_is_json_ready(searcher: Searcher) -> None:
    h = searcher.search("flu shots for hospital staff", k=1)[0]
    d = json.loads(json.dumps(h.to_dict()))
    assert d["pmid"] == 1003
    assert set(Hit.__struct_fields__) == set(d)


def test_common_terms_are_pruned_from_bm25_queries(searcher: Searcher, monkeypatch: pytest.MonkeyPatch) -> None:
    ts = searcher.terms
    assert ts.df("diabetes") >= 12
    assert ts.df("cefazolin") == 1
    assert ts.df("studies") == ts.df("study")
    assert ts.df("study") == 6
    assert ts.df("xylophone") == 0
    assert ts.df("study", cap=4) == 4  # counted only up to the cap
    assert ts.prune("study diabetes", budget=3) == "study"  # both over the budget: the first word is kept
    assert ts.prune("study diabetes", budget=3, keep_common=False) == ""  # ... or none (hybrid)
    assert ts.prune("study cefazolin", budget=3, keep_common=False) == "cefazolin"
    q = "diabetes insulin cefazolin"
    assert ts.prune(q) == q  # everything fits the default budget: unchanged
    assert ts.prune(q, budget=5) == "cefazolin"  # rarest kept, common ones dropped
    assert ts.prune("the of and", budget=0) == "the of and"  # nothing searchable: left to the store
    monkeypatch.setattr(type(ts).prune, "__defaults__", (5,))  # budget 5 postings
    hits = searcher.search(q, k=5, mode="lexical")
    assert [h.pmid for h in hits] == [1005]  # only the rare term was searched
    assert searcher.search("study diabetes", k=5, mode="lexical")  # every word common: the first is searched
    hybrid = searcher.search("study diabetes", k=5, mode="hybrid")
    assert hybrid  # dense answers ...
    assert all(h.lexical is None for h in hybrid)  # ... and BM25 scored nothing


def test_search_cli_json(corpus_settings, cli) -> None:
    home = corpus_settings.home
    r = cli("search", "type 2 diabetes insulin", "--k", "3", "--year-from", "2003",
            "--year-to", "2004", "--journal", "Diabetologia", "--json", home=home)
    assert r.code == 0, r.err
    hits = json.loads(r.out)
    assert [h["year"] for h in sorted(hits, key=lambda h: h["year"])] == [2003, 2004]
    assert {"pmid", "title", "journal", "year", "score", "snippet"} <= set(hits[0])
    r = cli("search", "flu shots for hospital staff", "--mode", "lexical", home=home)
    assert r.code == 0
    assert "[PMID:1003] Influenza vaccination" in r.out.splitlines()[0]
    r = cli("search", "x", "--year-from", "2010", "--year-to", "2000", home=home)
    assert r.code == 2
    assert "year_from=2010" in r.err
