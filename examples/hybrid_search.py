"""Hybrid search over the offline job's Milvus collection, reranked with ColBERT by the running service.

The query is embedded by the service (`POST /encode`: dense + sparse); Milvus runs one dense and one
sparse search and fuses them (reciprocal rank fusion); the service then scores the candidates' texts
against the query (`POST /score`) and they are ranked by ColBERT (or `--rank-by` another score).

    # 1. embed the corpus into parquet and into Milvus Lite (a local file)
    .venv/bin/python -m serve_app.offline --input examples/corpus.jsonl --output out/corpus \\
        --model .models/tiny --id-field doc_id --milvus-uri out/milvus.db
    # 2. with the service running (README "Set-up", same model), search
    .venv/bin/python examples/hybrid_search.py --milvus-uri out/milvus.db "museum history of the river"
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.request

from pymilvus import AnnSearchRequest, MilvusClient, RRFRanker

SCORES = ("colbert", "colbert+sparse+dense", "sparse+dense", "dense", "sparse")


def post(url: str, path: str, body: dict, api_key: str | None = None) -> dict:
    """POST JSON to the service, return its JSON answer."""
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {api_key}"} if api_key else {})}
    request = urllib.request.Request(url.rstrip("/") + path, json.dumps(body).encode(), headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def candidates(milvus: MilvusClient, collection: str, dense: list[float], sparse: dict[int, float],
               limit: int) -> list[dict]:
    """Dense and sparse searches in one `hybrid_search`, fused by RRF: `id`, `text`, `rrf` per hit."""
    requests = [AnnSearchRequest(data=[dense], anns_field="dense", param={"metric_type": "IP"}, limit=limit)]
    if sparse:  # a query without lexical weights matches nothing sparse (and Milvus Lite refuses it)
        requests.append(AnnSearchRequest(data=[sparse], anns_field="sparse", param={"metric_type": "IP"}, limit=limit))
    hits = milvus.hybrid_search(collection, requests, RRFRanker(60), limit=limit, output_fields=["text"])[0]
    return [{"id": hit["id"], "text": hit["entity"]["text"], "rrf": hit["distance"]} for hit in hits]


def search(query: str, milvus_uri: str, collection: str = "bge_m3", url: str = "http://127.0.0.1:8000",
           top_k: int = 10, candidates_k: int = 50, rank_by: str = "colbert", api_key: str | None = None) -> list[dict]:
    """The `top_k` best passages: hybrid candidates from Milvus, reranked by the service's scores."""
    item = post(url, "/encode", {"texts": [query], "dense": True, "sparse": True}, api_key)["data"][0]
    sparse = dict(zip(item["sparse"]["indices"], item["sparse"]["values"]))
    milvus = MilvusClient(uri=milvus_uri, token=os.environ.get("MILVUS_TOKEN", ""))
    milvus.load_collection(collection)  # Milvus Lite opens a collection released
    found = candidates(milvus, collection, item["dense"], sparse, candidates_k)
    if not found:
        return []
    scores = post(url, "/score", {"query": query, "passages": [c["text"] for c in found]}, api_key)["data"]
    ranked = [{**c, **s} for c, s in zip(found, scores)]  # s: index, dense, sparse, colbert and the hybrids
    return sorted(ranked, key=lambda r: r[rank_by], reverse=True)[:top_k]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("query")
    p.add_argument("--milvus-uri", required=True, help="Milvus Lite file (*.db) or http://host:19530")
    p.add_argument("--collection", default="bge_m3")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the running service")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--candidates", type=int, default=50, help="hybrid hits to rerank")
    p.add_argument("--rank-by", choices=SCORES, default="colbert")
    p.add_argument("--api-key", default=os.environ.get("BGE_M3_API_KEY"), help="if the service wants one")
    a = p.parse_args(argv)
    results = search(a.query, a.milvus_uri, a.collection, a.url, a.top_k, a.candidates, a.rank_by, a.api_key)
    for rank, r in enumerate(results, 1):
        print(f"{rank:>2}. {r['id']}  {a.rank_by}={r[a.rank_by]:.4f}  dense={r['dense']:.4f} sparse={r['sparse']:.4f} "
              f"rrf={r['rrf']:.4f}  {r['text'][:60]!r}")


if __name__ == "__main__":
    main()
