"""Routers contributed by the fine-tuning package: ``feedback.py``, ``retune.py``, ``adapters.py``.

Contract (``server.app.create_app`` mounts each module's ``router`` when the module exists):

* export ``router = litestar.Router(path="/v1/...", route_handlers=[...], guards=[require_role("curator")])``
  (``from server.auth import require_role``; roles: reader < curator < admin);
* the caller is ``request.user``: a ``server.auth.Principal`` with ``.name`` (API key name) and ``.role``;
* inject by parameter name (``NamedDependency[...]``): ``settings``, ``answer_store`` (AnswerStore), ``correction_store`` (CorrectionStore), ``job_store`` (JobStore),
  ``registry`` (AdapterRegistry), ``vllm`` (generation.vllm_client.VllmClient), ``rag`` (server.rag.RagService),
  ``resources`` (server.resources.Resources: all of the above);
* raise ``pubmind.errors`` exceptions; ``server.errors`` turns them into OpenAI-shaped JSON errors.
"""
