"""GPU check (make gpu-check): each recipe's model for a few hundred training steps in bf16 on one NVIDIA GPU,
torch.compile off and on: tokens/s, MFU against the chip's dense bf16 peak, peak GPU memory.

Needs only torch + transformers (and this checkout's shared/, put on the path: no slm install, no
datasets/trl/deepspeed, no network; synthetic tokens). Meant to finish in under 8 minutes on an H100/H200; a time budget skips what would not
fit and says so. Writes bench/gpu_check.md + bench/gpu_check.json.

    python bench/gpu_check.py [--steps 200] [--budget-s 420] [--only nanogpt-124m,phi3] [--peak-tflops 989]
    python bench/gpu_check.py --smoke        # 3 steps of the small models on whatever device (a CPU syntax check)

MFU = achieved FLOP/s / peak, with FLOPs per token = 6 * N + 12 * L * d * T (nanoGPT's estimate, PaLM appendix B):
N = the parameters a token's matmuls use (the LM head counts, an input embedding lookup and learned position table
do not; for a MoE only top-k of the E experts), L layers, d width, T the sequence length (the attention scores and
their weighted sum, forward + backward). Peak: H100/H200 SXM dense bf16 ~989 TFLOP/s (--peak-tflops for others).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: this checkout's packages import
from shared import REPO_ROOT  # noqa: E402
from shared.models.registry import flops_per_token  # noqa: E402  (the import registers slm_gpt with the Auto classes)

PEAKS = {"H100": 989.0, "H200": 989.0, "H20": 148.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}

# name: (config file, micro-batch, sequence length) -- the recipes' models; the big ones are the documents' GPU configs
MODELS = {
    "nanogpt-124m": ("train_nanogpt/gpt_124m.json", 12, 1024),
    "nanogpt-tiny": ("train_nanogpt/gpt_tiny.json", 12, 256),
    "phi3": ("train_phi3/phi3_config.json", 8, 128),
    "phi3-bs64": ("train_phi3/phi3_config.json", 64, 256),
    "mixtral-tiny": ("train_mixtral/mixtral_tiny.json", 12, 128),
    "mixtral-large": ("train_mixtral/mixtral_large.json", 8, 512),
    "phi2-0.2b": ("train_phi2/phi2_0.2b.json", 8, 512),
    "minigl-document": ("minigl/gpt_document.json", 12, 512),
}
VOCAB = {"slm_gpt": None}  # our GPT keeps its config's vocabulary; the others get 21,128 (the documents' tokenizer)


def config_of(path: str):
    data = {k: v for k, v in json.loads((REPO_ROOT / path).read_text()).items() if not k.startswith("_")}
    if data["model_type"] != "slm_gpt":
        data["vocab_size"] = 21128
    return AutoConfig.for_model(**data)


def matmul_params(model, config) -> int:
    """Parameters a token's matmuls touch: all, minus lookup-only tables, with a MoE's experts scaled by k/E."""
    n = 0
    tied = getattr(config, "tie_word_embeddings", False)
    out_emb = model.get_output_embeddings().weight
    modules = dict(model.named_modules())
    for name, p in model.named_parameters():
        is_lookup = isinstance(modules.get(name.rsplit(".", 1)[0]), torch.nn.Embedding)
        if is_lookup and not (tied and p is out_emb):
            continue  # an input embedding / position table is a lookup (tied: it is the head too, counted once)
        if ".experts." in name and getattr(config, "num_local_experts", 0):
            n += p.numel() * config.num_experts_per_tok // config.num_local_experts
        else:
            n += p.numel()
    return n


def peak_tflops(arg: float | None) -> tuple[float, str]:
    if arg:
        return arg, "--peak-tflops"
    if not torch.cuda.is_available():
        return float("nan"), "no GPU"
    name = torch.cuda.get_device_name()
    for key, value in PEAKS.items():
        if key in name.replace("NVIDIA ", "").split("-")[0].split(" ")[0] or key in name:
            return value, f"{name} (table)"
    return float("nan"), f"{name}: unknown peak, pass --peak-tflops"


def run_one(name, compiled: bool, steps: int, device: str, smoke: bool) -> dict:
    path, batch, seq = MODELS[name]
    config = config_of(path)
    if smoke:
        batch, seq = 2, min(seq, 64)
    kwargs = {} if config.model_type == "slm_gpt" else {"attn_implementation": "sdpa"}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, **kwargs).to(device).train()
    fpt = flops_per_token(config, matmul_params(model, config), seq)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    fwd = torch.compile(model) if compiled else model
    ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32  # bf16 autocast, fp32 master weights (Trainer's bf16)

    def step():
        with torch.autocast(device_type=device, dtype=dtype, enabled=device == "cuda"):
            loss = fwd(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    warm = 3 if smoke else 10
    t0 = time.perf_counter()
    for _ in range(warm):  # compilation happens here
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    if device == "cuda":
        torch.cuda.synchronize()
    sec = (time.perf_counter() - t0) / steps
    tps = batch * seq / sec
    out = {"model": name, "config": path, "compile": compiled, "batch": batch, "seq": seq, "steps": steps,
           "params": sum(p.numel() for p in model.parameters()), "matmul params": matmul_params(model, config),
           "s/step": sec, "tokens/s": tps, "TFLOP/s": tps * fpt / 1e12, "warm-up s (incl. compile)": warm_s,
           "loss": float(loss), "peak GiB": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}
    del model, opt, fwd
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--budget-s", type=float, default=420, help="skip what would start after this many seconds")
    p.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(MODELS)}")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--smoke", action="store_true", help="3 steps of the small models, any device (a syntax check)")
    p.add_argument("--out", default=str(REPO_ROOT / "bench"))
    a = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not a.smoke:
        print("gpu-check: no CUDA GPU here (torch.cuda.is_available() is False); --smoke runs a CPU syntax check")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    names = [n for n in (a.only.split(",") if a.only else MODELS) if n]
    if a.smoke:
        names = [n for n in names if n in ("nanogpt-tiny", "phi3", "mixtral-tiny")]
    peak, peak_from = peak_tflops(a.peak_tflops)
    start, rows, skipped = time.perf_counter(), [], []
    steps = 3 if a.smoke else a.steps
    for name in names:
        for compiled in ((False,) if a.smoke else (False, True)):
            if time.perf_counter() - start > a.budget_s:
                skipped.append(f"{name} compile={compiled}")
                continue
            try:
                r = run_one(name, compiled, steps, device, a.smoke)
                r["MFU"] = r["TFLOP/s"] / peak if peak == peak else None
            except Exception as e:  # report and go on: one model's failure must not hide the others' figures
                r = {"model": name, "compile": compiled, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            rows.append(r)
            print(json.dumps(r, default=str), flush=True)
    import transformers
    env = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "peak bf16 TFLOP/s": peak,
           "peak from": peak_from, "torch": torch.__version__, "transformers": transformers.__version__,
           "seconds": round(time.perf_counter() - start, 1), "skipped (time budget)": skipped}
    lines = ["# GPU check", "", *(f"- **{k}**: {v}" for k, v in env.items()), "",
             "| model | compile | batch x seq | tokens/s | TFLOP/s | MFU | peak GiB | warm-up s | loss |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['compile']} | error: {r['error']} |||||||")
            continue
        mfu = f"{100 * r['MFU']:.1f}%" if r.get("MFU") is not None else "–"
        mem = f"{r['peak GiB']:.1f}" if r["peak GiB"] is not None else "–"
        lines.append(f"| {r['model']} | {'on' if r['compile'] else 'off'} | {r['batch']} x {r['seq']} | "
                     f"{r['tokens/s']:,.0f} | {r['TFLOP/s']:.1f} | {mfu} | {mem} | {r['warm-up s (incl. compile)']:.0f} | "
                     f"{r['loss']:.3f} |")
    goal = [r for r in rows if r.get("model") == "nanogpt-124m" and r.get("compile") and "MFU" in r]
    if goal and goal[0]["MFU"] is not None:
        lines += ["", f"nanoGPT 124M, compiled: MFU {100 * goal[0]['MFU']:.1f}% (goal >= 45%): "
                      f"{'met' if goal[0]['MFU'] >= 0.45 else 'NOT met'}"]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "gpu_check_smoke" if a.smoke else "gpu_check"
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (out / f"{stem}.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1, default=str))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main(sys.argv[1:]))
