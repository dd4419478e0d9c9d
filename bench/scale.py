"""The scale benchmark (make bench, section "scale"): the main job's data path on generated corpora of 10M / 100M /
1B characters, time and peak memory, and how long a 2-step run's final evaluation takes.

    python -m bench.scale 10M 100M        # rows into bench/scale.json (make bench reads them back)
    python -m bench.scale 1B              # by hand, once: ~3 GB of JSONL, about an hour on 2 cores
    python -m bench.scale 1B --memory-limit 4G   # the same inside a 4 GiB memory cgroup (root): the goal

For each size a JSONL corpus is generated (bench/textgen.py: Chinese text from a character n-gram model of the
bundled sets, 2,048-character documents) and `make train-phi3`'s data path runs on it in a fresh process with an
empty `datasets` cache: load (Arrow, memory-mapped), render, split, the offline tokenizer (a BPE trained on the
corpus), tokenise (worker processes) and pack. Peak memory is the proportional set size (PSS) of that process and
its workers summed, sampled every 0.2 s (PSS, not RSS: forked workers share their parent's pages, which a sum of
resident sets would count once per worker). Then the same path again (everything cached: the second run of a user), and
`train_phi3/train.py max_steps=2` on the corpus, whose log says how long the final evaluation took and on how many
tokens (data.eval_max_tokens).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from shared import REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "scale.json"
DATA_PATH = """
import json, sys, time
from shared.training import train
from shared.config.recipe import load_recipe
t = time.perf_counter()
data = train.load_data(load_recipe("recipes/phi3/pretrain.yaml", sys.argv[1:]))
print("RESULT " + json.dumps({"seconds": time.perf_counter() - t, "train_blocks": len(data.train),
      "eval_blocks": len(data.eval), "tokenizer": len(data.tokenizer), "split": data.facts()["data split"]}))
"""


def size(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGbB]?)", text).groups()
    return int(float(number) * {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}[unit.lower()])


def write_corpus(path: Path, chars: int) -> float:
    from bench.textgen import NgramModel, bundled_chinese_texts

    t = time.perf_counter()
    model = NgramModel.from_texts(bundled_chinese_texts(), order=4)
    with open(path, "w", encoding="utf-8") as f:
        for doc in model.generate(chars, seed=0):
            f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
    return time.perf_counter() - t


def pss(pid: int) -> tuple[int, int]:
    """(PSS, its anonymous part) of one process in bytes, from /proc/<pid>/smaps_rollup. The rest of PSS is file
    pages: the memory-mapped Arrow files, clean page cache that the kernel drops under memory pressure."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Pss", "Pss_Anon"):
                fields[key] = int(value.split()[0]) * 1024
    return fields.get("Pss", 0), fields.get("Pss_Anon", 0)


class MemoryLimit:
    """A Linux memory cgroup (v2 `memory.max`, or v1 `memory.limit_in_bytes`) of `limit` bytes that the measured
    processes run in: the kernel reclaims the Arrow files' page cache before it kills anything, so a run that
    finishes inside it needs no more than `limit` of memory. `peak()`: the cgroup's high-water mark (page cache
    included). Needs root (or a delegated cgroup); `MemoryLimit.error()` says why it can't be made."""

    V2, V1 = Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/memory")

    def __init__(self, limit: int):
        self.limit, name = limit, f"slm-scale-{os.getpid()}"
        if (self.V2 / "cgroup.controllers").is_file():
            self.dir, self.max_file, self.peak_file = self.V2 / name, "memory.max", "memory.peak"
        else:
            self.dir, self.max_file, self.peak_file = self.V1 / name, "memory.limit_in_bytes", "memory.max_usage_in_bytes"
        self.dir.mkdir()
        (self.dir / self.max_file).write_text(str(limit))

    @staticmethod
    def error() -> str | None:
        base = MemoryLimit.V2 if (MemoryLimit.V2 / "cgroup.controllers").is_file() else MemoryLimit.V1
        return None if os.access(base, os.W_OK) else f"cannot create a memory cgroup under {base} (needs root)"

    def enter(self) -> None:  # preexec_fn: the child joins before it runs anything
        (self.dir / "cgroup.procs").write_text(str(os.getpid()))

    def peak(self) -> int:
        path = self.dir / self.peak_file
        return int(path.read_text()) if path.is_file() else 0

    def close(self) -> None:
        try:
            self.dir.rmdir()
        except OSError:
            pass


def run_measured(cmd: list[str], env: dict, limit: MemoryLimit | None = None
                 ) -> tuple[subprocess.CompletedProcess, float, float, float]:
    """(the finished process, seconds, peak memory of it and its children in bytes: their PSS summed, and the peak
    of the anonymous part of that sum). `limit`: run inside that memory cgroup."""
    import psutil

    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=limit.enter if limit else None)
    peak, done = [0, 0], threading.Event()

    def sample():
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                both = [pss(p.pid) for p in [root, *root.children(recursive=True)]]
                peak[0] = max(peak[0], sum(b[0] for b in both))
                peak[1] = max(peak[1], sum(b[1] for b in both))
            except (psutil.Error, OSError):
                pass
            time.sleep(0.2)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out, _ = proc.communicate()
    done.set()
    watcher.join()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, ""), time.perf_counter() - t, peak[0], peak[1]


def measure(chars: int, limit_bytes: int | None = None) -> dict:
    """One row. `limit_bytes`: the data path and the 2-step run each run in a memory cgroup of that size; the row
    records the limit and the cgroup's peak (a run the kernel kills for memory fails the measurement)."""
    limit = None
    with tempfile.TemporaryDirectory(prefix="slm-scale-") as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.jsonl"
        made = write_corpus(corpus, chars)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp / "datasets"),
               "TOKENIZERS_PARALLELISM": "false"}
        args = [f"data.path={corpus}", "data.template='{text}'", f"run.output_root={tmp / 'runs'}"]
        row = {"characters": chars, "jsonl_bytes": corpus.stat().st_size, "generate_s": round(made, 1)}
        for name in ("cold", "cached"):
            limit = MemoryLimit(limit_bytes) if limit_bytes else None
            proc, seconds, peak, anon = run_measured([sys.executable, "-c", DATA_PATH, *args], env, limit)
            if proc.returncode != 0:
                raise RuntimeError(f"data path failed at {chars:,} characters (exit {proc.returncode}"
                                   f"{'; -9: killed for memory?' if proc.returncode == -9 else ''}):\n"
                                   f"{proc.stdout[-2000:]}")
            result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
            row[name] = {"seconds": round(seconds, 1), "peak_pss_gib": round(peak / 2**30, 2),
                         "peak_anon_gib": round(anon / 2**30, 2),
                         "train_blocks": result["train_blocks"], "eval_blocks": result["eval_blocks"]}
            if limit:
                row[name]["cgroup_peak_gib"] = round(limit.peak() / 2**30, 2)
                limit.close()
            row["split"] = result["split"]
        limit = MemoryLimit(limit_bytes) if limit_bytes else None
        proc, seconds, peak, anon = run_measured([sys.executable, "train_phi3/train.py", *args, "training.max_steps=2",
                                                  "training.eval_strategy=no", "training.save_strategy=no"], env, limit)
        if proc.returncode != 0:
            raise RuntimeError(f"2-step run failed at {chars:,} characters (exit {proc.returncode}"
                               f"{'; -9: killed for memory?' if proc.returncode == -9 else ''}):\n{proc.stdout[-2000:]}")
        log = (tmp / "runs/phi3/poetry/final/train_log.md").read_text(encoding="utf-8")
        final = log.split("## Final evaluation", 1)[1]
        row["two_steps"] = {"seconds": round(seconds, 1), "peak_pss_gib": round(peak / 2**30, 2),
                            "peak_anon_gib": round(anon / 2**30, 2),
                            "eval_runtime_s": float(re.search(r"eval_runtime: ([\d.]+)", final).group(1)),
                            "eval_scope": final.strip().splitlines()[0]}
        if limit:
            row["two_steps"]["cgroup_peak_gib"] = round(limit.peak() / 2**30, 2)
            limit.close()
            row["memory_limit_gib"] = round(limit_bytes / 2**30, 2)
    return row


def mem(part: dict) -> str:
    anon = f" ({part['peak_anon_gib']} GiB)" if "peak_anon_gib" in part else ""
    cgroup = f"; cgroup peak {part['cgroup_peak_gib']} GiB" if "cgroup_peak_gib" in part else ""
    return f"{part['peak_pss_gib']} GiB{anon}{cgroup}"


def markdown(rows: list[dict]) -> str:
    lines = ["`make train-phi3`'s data path (load, render, split, offline BPE tokenizer, tokenise, pack) on generated "
             "Chinese JSONL, in a fresh process with an empty `datasets` cache (cold), then again (cached), then a "
             "2-step training run whose final evaluation is bounded by `data.eval_max_tokens`. Peak memory: the "
             "proportional set size (PSS) of the process and its tokenising workers, summed; in brackets its "
             "anonymous part (what the path allocates; the rest is pages of the memory-mapped Arrow files, page "
             "cache the kernel reclaims under pressure). Rows without the bracket were measured before it was "
             "recorded.", "",
             "| characters | JSONL | cold: seconds | cold: peak PSS | cached: seconds | cached: peak PSS | 2-step run: "
             "seconds | its final evaluation | measured |", "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: r["characters"]):
        lines.append(f"| {r['characters']:,} | {r['jsonl_bytes'] / 2**30:.2f} GiB | {r['cold']['seconds']:,} | "
                     f"{mem(r['cold'])} | {r['cached']['seconds']:,} | {mem(r['cached'])} "
                     f"| {r['two_steps']['seconds']:,} | {r['two_steps']['eval_runtime_s']:.1f} s | "
                     f"{r.get('measured', '')} |")
    if rows:
        last = max(rows, key=lambda r: r["characters"])
        scope = last["two_steps"]["eval_scope"].rstrip(":").replace("On ", "on ", 1)
        lines += ["", f"At {last['characters']:,} characters: {last['split']}. The 2-step run's final evaluation "
                  f"took {last['two_steps']['eval_runtime_s']:.1f} s, {scope}."]
    return "\n".join(lines)


def bench_scale(quick: bool) -> dict:
    """The bench section: measure the quick/full sizes now, keep rows measured by hand (1B) from bench/scale.json."""
    from bench.common import load_avg

    sizes = (1_000_000, 10_000_000) if quick else (10_000_000, 100_000_000)
    kept = [r for r in json.loads(RESULTS.read_text())["rows"] if r["characters"] not in sizes] \
        if RESULTS.is_file() and not quick else []
    rows = []
    for chars in sizes:
        la = load_avg()
        print(f"scale: {chars:,} characters ...", flush=True)
        rows.append({**measure(chars), "measured": f"make bench, load {la[0]}"})
    return {"rows": kept + rows, "markdown": markdown(kept + rows)}


def main(argv: list[str]) -> None:
    """Sizes to measure (10M, 100M, 1B ...); `--memory-limit 4G`: run them inside a memory cgroup of that size."""
    from bench.common import load_avg
    from shared.config.errors import UserError

    limit = None
    if "--memory-limit" in argv:
        at = argv.index("--memory-limit")
        if at + 1 >= len(argv):
            raise UserError("--memory-limit needs a size, e.g. --memory-limit 4G")
        limit, argv = size(argv[at + 1]) * 2**30 // 10**9, argv[:at] + argv[at + 2:]  # 4G: 4 GiB
        if MemoryLimit.error():
            raise UserError(f"--memory-limit: {MemoryLimit.error()}")
    rows = json.loads(RESULTS.read_text())["rows"] if RESULTS.is_file() else []
    for text in argv or ["10M"]:
        chars, la = size(text), load_avg()
        within = f" in a {limit / 2**30:g} GiB memory cgroup" if limit else ""
        row = {**measure(chars, limit), "measured": f"`python -m bench.scale {text}`{within}, load {la[0]}, "
                                                    f"{time.strftime('%Y-%m-%d')}"}
        rows = [r for r in rows if r["characters"] != chars] + [row]
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps({"rows": rows}, indent=1) + "\n", encoding="utf-8")
        print(markdown([row]), flush=True)

if __name__ == "__main__":
    from shared.config.errors import run_main

    run_main(main)
