"""Memory over hours: the RSS of the model replica, the ingress and the proxy under steady mixed load.

    python -m bench.soak --model .models/tiny --name soak --hours 2 [--rate 15] [--callers 32]

Starts the shipped serve_config.yaml (`bench.servers.serve_run`, Serve's default proxy: the Python proxy
is one of the processes watched) with the memory cache bounded at `--cache-mb`, then for `--hours` sends
requests at up to `--rate` per second from `--callers` clients. Each request takes the next route of
`ROUTES` (OpenAI dense, `/encode` with all three outputs, TEI's `/embed_sparse`) and 1-16 texts; every
text is new (words drawn fresh), except a share `--repeat` drawn from recent texts, so the cache both hits
and evicts. Every answer is checked: status 200 and one result per text.

Every `--sample-s` the RSS of each Serve process is appended to bench/results/<name>.samples.jsonl (a run
cut short keeps what it sampled; `--report-only` rebuilds the report from it). After `--warmup-min` a
line is fitted per process: its slope in MB/min is the figure (target < 0.25). Writes
bench/results/<name>.json and <name>.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import numpy as np
import psutil

from serve_app.tools.tiny_model import _EN_WORDS, _JA_WORDS

from . import servers

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_MB_PER_MIN = 0.25
# Serve's processes by a marker of their command line (Ray sets it to the actor's class and name).
PROCESSES = {"model": "ServeReplica:bge-m3:EmbeddingModel", "ingress": "ServeReplica:bge-m3:Ingress",
             "proxy": "ray::ProxyActor", "controller": "ray::ServeController"}


def _openai(texts: list[str]) -> dict:
    return {"input": texts}


def _encode(texts: list[str]) -> dict:
    return {"texts": texts, "dense": True, "sparse": True, "colbert": True}


def _sparse(texts: list[str]) -> dict:
    return {"inputs": texts}


def _count_openai(body: dict) -> int:
    return len(body["data"])


def _count_encode(body: dict) -> int:
    return len(body["data"])


def _count_sparse(body: list) -> int:
    return len(body)


# (route, request body for texts, results in an answer's body): taken in turn, one per request.
ROUTES = (("/v1/embeddings", _openai, _count_openai), ("/encode", _encode, _count_encode),
          ("/embed_sparse", _sparse, _count_sparse))


class Texts:
    """New texts of 5-60 words (English or Japanese), and now and then one sent a little earlier."""

    def __init__(self, seed: int = 0, repeat: float = 0.1, recent: int = 2048):
        self._rng, self._repeat, self._recent = random.Random(seed), repeat, []
        self._size = recent

    def take(self, n: int) -> list[str]:
        """`n` texts for one request, none twice in it."""
        out: list[str] = []
        while len(out) < n:
            if self._recent and self._rng.random() < self._repeat:
                text = self._rng.choice(self._recent)
                if text in out:
                    continue
            else:
                words, sep = (_JA_WORDS, "") if self._rng.random() < 0.3 else (_EN_WORDS, " ")
                text = sep.join(self._rng.choices(words, k=self._rng.randint(5, 60)))
                self._recent.append(text)
                if len(self._recent) > self._size:
                    self._recent.pop(self._rng.randrange(len(self._recent)))
            out.append(text)
        return out


def find_processes(root: int) -> dict[str, int]:
    """The pids of `PROCESSES` under `root` (a `serve run`'s process tree)."""
    return {name: pid for pid, cmd in servers.commands_under(root) for name, marker in PROCESSES.items()
            if marker in cmd}


def rss_mb(pids: dict[str, int]) -> dict[str, float | None]:
    """Each process's resident set in MB; None once it is gone (a restarted replica shows as a gap)."""
    out: dict[str, float | None] = {}
    for name, pid in pids.items():
        try:
            out[name] = round(psutil.Process(pid).memory_info().rss / 2**20, 2)
        except psutil.NoSuchProcess:
            out[name] = None
    return out


def slopes(samples: list[dict], warmup_min: float) -> dict[str, dict]:
    """Per process: RSS after warm-up (first, last, max), and the least-squares slope in MB/min over all of
    it and over its second half (a rise that is levelling off shows as a smaller second figure)."""
    out = {}
    names = sorted({name for s in samples for name in s["rss_mb"]})
    for name in names:
        points = [(s["minute"], s["rss_mb"][name]) for s in samples
                  if s["minute"] >= warmup_min and s["rss_mb"].get(name) is not None]
        if len(points) < 3:
            continue
        t, mb = np.array(points).T
        half = t >= t[0] + (t[-1] - t[0]) / 2
        out[name] = {"first_mb": float(mb[0]), "last_mb": float(mb[-1]), "max_mb": float(mb.max()),
                     "slope_mb_per_min": round(float(np.polyfit(t, mb, 1)[0]), 4),
                     "second_half_slope_mb_per_min": round(float(np.polyfit(t[half], mb[half], 1)[0]), 4),
                     "below_target": bool(np.polyfit(t, mb, 1)[0] < TARGET_MB_PER_MIN)}
    return out


async def _drive(base: str, stop_at: float, rate: float, callers: int, texts: Texts, per_request: int,
                 tally: Counter) -> None:
    """Requests until `stop_at`, at most `rate` per second; each answer's status and count into `tally`."""
    next_at = time.monotonic()
    turn = 0

    async def caller(session: aiohttp.ClientSession) -> None:
        nonlocal next_at, turn
        while True:
            now = time.monotonic()
            at, next_at = max(next_at, now), max(next_at, now) + 1 / rate
            if at >= stop_at:
                return
            await asyncio.sleep(at - now)
            route, body, count = ROUTES[turn % len(ROUTES)]
            turn += 1
            batch = texts.take(random.randint(1, per_request))
            try:
                async with session.post(base + route, json=body(batch)) as r:
                    status, answer = r.status, await r.json(content_type=None)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
                tally[f"{route} {type(e).__name__}"] += 1
                continue
            try:
                right = status != 200 or count(answer) == len(batch)
            except (KeyError, TypeError):
                right = False
            tally[f"{route} {status}" + ("" if right else " wrong answer")] += 1

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=callers), timeout=timeout) as session:
        await asyncio.gather(*(caller(session) for _ in range(callers)))


async def _sample(pids: dict[str, int], started: float, stop_at: float, every: float, log: Path,
                  tally: Counter) -> None:
    with log.open("a") as f:
        while time.monotonic() < stop_at:
            minute = (time.monotonic() - started) / 60
            f.write(json.dumps({"minute": round(minute, 3), "rss_mb": rss_mb(pids),
                                "requests": sum(tally.values())}) + "\n")
            f.flush()
            await asyncio.sleep(every)


def plot(samples: list[dict], warmup_min: float, path: Path, title: str) -> None:
    """RSS per process over the run, one panel each (their own scales: a few MB of growth in a 250 MB process
    would not show beside the model replica), the warm-up shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({n for s in samples for n in s["rss_mb"]})
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 2.0 * len(names)), sharex=True)
    for ax, name in zip(axes, names, strict=True):
        points = [(s["minute"], s["rss_mb"][name]) for s in samples if s["rss_mb"].get(name) is not None]
        ax.plot(*zip(*points))
        ax.axvspan(0, warmup_min, color="0.9")
        after = [mb for minute, mb in points if minute >= warmup_min]
        if after:  # the scale of what happens after the warm-up, with a margin
            ax.set_ylim(min(after) - 10, max(after) + 10)
        ax.set_ylabel(f"{name}\nRSS MB")
        ax.grid(alpha=0.3)
    axes[0].set_title(title + " (warm-up shaded)")
    axes[-1].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(name: str, samples: list[dict], warmup_min: float, meta: dict) -> dict:
    """The result JSON (slopes per process beside the run's settings and answers) and its plot."""
    result = {**meta, "warmup_min": warmup_min, "samples": len(samples),
              "minutes": samples[-1]["minute"] if samples else 0, "processes": slopes(samples, warmup_min)}
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1))
    plot(samples, warmup_min, RESULTS / f"{name}.png", f"RSS under mixed load ({meta.get('model', '')})")
    return result


def main(argv: list[str] | None = None) -> dict:
    """Run the soak (or rebuild its report with `--report-only`), print the slopes, write the JSON and plot."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--name", default="soak")
    p.add_argument("--hours", type=float, default=2.0)
    p.add_argument("--rate", type=float, default=15.0, help="requests per second at most (all callers together)")
    p.add_argument("--callers", type=int, default=32)
    p.add_argument("--texts-per-request", type=int, default=16, help="each request takes 1..this many texts")
    p.add_argument("--repeat", type=float, default=0.1, help="share of texts drawn from recent ones (cache hits)")
    p.add_argument("--cache-mb", type=int, default=32)
    p.add_argument("--sample-s", type=float, default=30.0)
    p.add_argument("--warmup-min", type=float, default=10.0)
    p.add_argument("--port", type=int, default=8431)
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the samples file")
    args = p.parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    log = RESULTS / f"{args.name}.samples.jsonl"
    meta_path = RESULTS / f"{args.name}.meta.json"
    if not args.report_only:
        log.unlink(missing_ok=True)
        command = "python -m bench.soak " + " ".join(argv or sys.argv[1:])
        meta = {"name": args.name, "model": args.model, "command": command,
                "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores",
                "settings": {k: getattr(args, k) for k in ("hours", "rate", "callers", "texts_per_request",
                                                            "repeat", "cache_mb")}}
        meta["answers"] = _run(args, log)
        meta_path.write_text(json.dumps(meta, indent=1))
    meta = json.loads(meta_path.read_text())
    samples = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    result = report(args.name, samples, args.warmup_min, meta)
    print(json.dumps({"answers": result["answers"], "processes": result["processes"]}, indent=1))
    return result


def _run(args: argparse.Namespace, log: Path) -> dict:
    config = servers.ours_config(args.model, args.port, cache=True, num_threads=None)
    config["applications"][0]["args"]["cache"]["max_bytes"] = args.cache_mb * 2**20
    out = RESULTS / f"{args.name}-logs"
    out.mkdir(parents=True, exist_ok=True)
    server = servers.serve_run("ours-soak", config, args.port, out, throughput_optimized=False)
    tally: Counter = Counter()
    try:
        pids = find_processes(server.proc.pid)
        missing = set(PROCESSES) - set(pids)
        if missing:
            raise RuntimeError(f"no process found for {sorted(missing)} under `serve run`")
        started = time.monotonic()
        stop_at = started + args.hours * 3600

        async def both() -> None:
            await asyncio.gather(
                _drive(server.url, stop_at, args.rate, args.callers, Texts(repeat=args.repeat),
                       args.texts_per_request, tally),
                _sample(pids, started, stop_at, args.sample_s, log, tally))

        asyncio.run(both())
    finally:
        server.stop()
    return dict(sorted(tally.items()))


if __name__ == "__main__":
    main()
