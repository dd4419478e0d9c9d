"""Phi-2 DPO pairs, the document's way (`make phi2-dpo-data`).

For every instruction the chosen answer is the dataset's own; the rejected one is written by an EARLY checkpoint of
the SFT run (the one nearest `stage.generator_epoch` of its epochs: a model that answers in the right form but
worse). A pair whose rejected answer is more than `stage.max_similarity` similar to the chosen one teaches nothing
and is dropped; similarity is the character-level Rouge-L F-measure (shared/eval/metrics.py: longest common
subsequence of characters, so it fits Chinese). Records that already carry a `rejected` answer (the bundled set has
120) are kept as they are. Writes final/pairs.jsonl (instruction, input, output, rejected) for recipes/phi2/dpo.yaml.
"""
import json
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from shared.config import cli
from shared.inference import generate
from shared.training import stage
from shared.training.checkpoints import checkpoints, is_complete
from shared.data.sources import load_source
from shared.config.errors import UserError, run_main
from shared.eval.metrics import rouge_l
from shared.config.files import display_path
from shared.config.recipe import resolve_path


@dataclass
class DPOData:
    sft_run: str = "runs/phi2/sft"
    generator_epoch: float = 0.5  # fraction of the SFT run's epochs
    max_similarity: float = 0.9
    prompt_template: str = "{instruction}"
    max_new_tokens: int = 128
    max_pairs: int | None = None


def early_checkpoint(run: str, fraction: float):
    """The complete SFT checkpoint whose epoch is nearest `fraction` of the run's last epoch."""
    found = [(json.loads((c / "trainer_state.json").read_text())["epoch"], c)
             for c in checkpoints(resolve_path(run)) if is_complete(c)]
    if not found:
        raise UserError(f"stage.sft_run: {run} has no complete checkpoint (make phi2-sft keeps one per epoch)")
    last = max(epoch for epoch, _ in found)
    return min(found, key=lambda f: abs(f[0] - fraction * last))


def too_similar(chosen: str, rejected: str, limit: float) -> bool:
    """A rejected answer that (nearly) repeats the chosen one, or says nothing, teaches DPO nothing."""
    return not rejected.strip() or rouge_l(chosen, rejected) > limit


def main(argv):
    recipe, opts = cli.parse(argv, "recipes/phi2/dpo-data.yaml", __doc__.splitlines()[0], stage=DPOData)
    s = recipe.stage
    epoch, folder = early_checkpoint(s.sft_run, s.generator_epoch)
    model, tok, _ = generate.load(folder)
    records, prov = load_source(recipe.data)
    if s.max_pairs:
        records = records.select(range(min(s.max_pairs, len(records))))
    preset = {**recipe.generation, "max_new_tokens": s.max_new_tokens}
    kept, dropped, bundled = [], [], 0
    torch.manual_seed(recipe.training.get("seed", 42))
    for r in tqdm(records, desc="rejected answers from the early checkpoint"):
        if r.get("rejected"):
            bundled += 1
            kept.append(r)
            continue
        prompt = s.prompt_template.format(**{k: v or "" for k, v in r.items()})
        answer = generate.generate(model, tok, prompt, preset)[len(prompt):].strip()
        (dropped if too_similar(r["output"], answer, s.max_similarity) else kept).append({**r, "rejected": answer})
    with stage.output(recipe, "Phi-2 DPO pairs", publish_log=opts.publish_log) as out:
        with open(out.dir / "pairs.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
        out.log.facts.update({
            "data": prov.describe(), "generator": f"{display_path(folder)} (epoch {epoch:.2f} of the SFT run)",
            "similarity": f"character-level Rouge-L F (shared/eval/metrics.py); a pair above {s.max_similarity} is dropped",
            "pairs": f"{len(kept)} kept ({bundled} bundled with their own rejected answer, {len(kept) - bundled} "
                     f"generated), {len(dropped)} dropped as too similar or empty",
        })
        examples = kept[bundled:bundled + 3] if len(kept) > bundled else kept[:3]
        out.log.add_section("Examples", "\n\n".join(
            f"**{r['instruction']}**\n\n- chosen: {r['output'][:120]}\n- rejected: {r['rejected'][:120]}"
            for r in examples))


if __name__ == "__main__":
    run_main(main)
