"""Mixtral: configs and parameter counts, router loss logging, expert load, the 8x7B DeepSpeed ZeRO-3 code path on a
tiny random Mixtral (offload too), a two-process run through the Makefile's launcher, reload + beam-search preset."""
import json
import re
import subprocess

import pytest
import torch
from conftest import REPO, run
from transformers import AutoConfig, AutoModelForCausalLM

from shared.models.moe import expert_load, expert_load_markdown


def config(name: str, **kw):
    data = {k: v for k, v in json.loads((REPO / "train_mixtral" / name).read_text()).items() if not k.startswith("_")}
    return AutoConfig.for_model(**{**data, **kw})


def n_params(cfg) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())


@pytest.mark.parametrize("name, vocab, millions", [
    ("mixtral_tiny.json", 32000, 30.03),   # the document's tiny config
    ("mixtral_large.json", 115, 361.24),   # the document's "361.24M": only with a 115-token vocabulary
    ("mixtral_large.json", 32000, 410.22),
    ("mixtral_large.json", 21128, 393.52),
    ("mixtral_8x7b_config.json", 32000, 46702.79),
])
def test_parameter_counts(name, vocab, millions):
    assert n_params(config(name, vocab_size=vocab)) / 1e6 == pytest.approx(millions, abs=0.01)


def test_expert_load_counts_every_routed_token():
    from datasets import Dataset

    torch.manual_seed(0)
    cfg = config("mixtral_tiny.json", vocab_size=100, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                 num_key_value_heads=4, num_hidden_layers=2)
    model = AutoModelForCausalLM.from_config(cfg)
    data = [{"input_ids": torch.randint(0, 100, (16,)).tolist()} for _ in range(6)]

    counts = expert_load(model, Dataset.from_list(data), batch_size=4)  # packed blocks: a datasets.Dataset
    assert counts.shape == (2, 8)
    assert (counts.sum(dim=1) == 6 * 16 * 2).all()  # every token picks top-2 experts in every layer
    table = expert_load_markdown(counts)
    assert table.count("\n| ") == 2 + 1 and "even split is 12.5%" in table
    # token-bin windows (a torch Dataset, item by item) count the same way: the bins path of a Mixtral recipe
    windows = [{"input_ids": torch.tensor(r["input_ids"])} for r in data]
    assert torch.equal(expert_load(model, windows, batch_size=4), counts)
    collapsed = torch.zeros(1, 8, dtype=torch.long)
    collapsed[0, 0] = 100
    assert "collapsed?" in expert_load_markdown(collapsed)


def test_moe_trainer_evaluates_the_language_model_loss_alone(tmp_path):
    """Mixtral adds coef * aux_loss to its loss in eval mode too; MoETrainer's eval loss must be the LM loss (what a
    dense model's eval loss is), while training still optimises LM + coef * aux."""
    from datasets import Dataset
    from transformers import TrainingArguments

    from shared.training.moe_trainer import MoETrainer

    torch.manual_seed(0)
    cfg = config("mixtral_tiny.json", vocab_size=64, hidden_size=32, intermediate_size=32, num_attention_heads=4,
                 num_key_value_heads=4, num_hidden_layers=2, router_aux_loss_coef=0.5, output_router_logits=True)
    model = AutoModelForCausalLM.from_config(cfg)
    ids = torch.randint(0, 64, (4, 16))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=4, report_to=[], use_cpu=True)
    got = MoETrainer(model=model, args=args, eval_dataset=data).evaluate()["eval_loss"]
    model.eval()
    with torch.no_grad():
        both = model(input_ids=ids, labels=ids, output_router_logits=True)
        lm = model(input_ids=ids, labels=ids, output_router_logits=False).loss.item()
    assert both.loss.item() - lm == pytest.approx(0.5 * both.aux_loss.item(), rel=1e-4)  # the model adds it
    assert both.aux_loss.item() > 0.5
    assert got == pytest.approx(lm, rel=1e-5)


def test_balance_loss_per_layer_sees_what_the_pooled_loss_misses():
    """Each layer sending every token to its own pair of experts: pooled over layers (transformers) the loss is at its
    balanced minimum (top_k = 2); per layer it is maximal (8 = E); an even router scores 2 both ways."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    from shared.models.moe import per_layer_balance_loss

    tokens, experts = 64, 8
    layers = []
    for layer in range(4):
        logits = torch.full((tokens, experts), -30.0)
        logits[:, 2 * layer:2 * layer + 2] = 0.0  # this layer: experts 2l and 2l+1, half the probability each
        layers.append(logits)
    assert float(load_balancing_loss_func(tuple(layers), experts, 2)) == pytest.approx(2.0, abs=1e-4)
    assert float(per_layer_balance_loss(tuple(layers), experts, 2)) == pytest.approx(8.0, abs=1e-4)
    torch.manual_seed(0)
    even = tuple(torch.randn(4096, experts) * 0.01 for _ in range(4))
    assert float(per_layer_balance_loss(even, experts, 2)) == pytest.approx(2.0, abs=0.05)


def test_moe_trainer_trains_on_the_per_layer_balance_loss_when_configured(tmp_path):
    from transformers import TrainingArguments

    from shared.models.moe import per_layer_balance_loss
    from shared.training.moe_trainer import MoETrainer

    torch.manual_seed(0)
    cfg = config("mixtral_tiny.json", vocab_size=64, hidden_size=32, intermediate_size=32, num_attention_heads=4,
                 num_key_value_heads=4, num_hidden_layers=2, router_aux_loss_coef=0.5, output_router_logits=True)
    model = AutoModelForCausalLM.from_config(cfg).train()
    ids = torch.randint(0, 64, (4, 16))
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = MoETrainer(model=model, args=args)
    with torch.no_grad():
        lm = model(input_ids=ids, labels=ids, output_router_logits=False).loss.item()
        logits = model(input_ids=ids, labels=ids).router_logits
        per_layer, pooled = per_layer_balance_loss(logits, 8, 2).item(), model(input_ids=ids, labels=ids).aux_loss.item()
        for flag, aux in ((False, pooled), (True, per_layer)):
            model.config.router_aux_loss_per_layer = flag
            loss = trainer.compute_loss(model, {"input_ids": ids, "labels": ids}).item()
            assert loss == pytest.approx(lm + 0.5 * aux, rel=1e-5)
    assert per_layer > pooled  # different numbers, so the assertion above tells the two apart


TINY_8X7B_PATH = [  # the 8x7B recipe's code path, on a tiny random Mixtral that fits this CPU
    "model.config=train_mixtral/mixtral_tiny.json", "model.init_from=null", "tokenizer.name=null",
    "tokenizer.fallback=bpe", "tokenizer.vocab_size=400", "run.precision=fp32", "training.max_steps=3",
    "data.block_size=32", "data.max_samples=60", "training.per_device_train_batch_size=2",
    "training.per_device_eval_batch_size=2", "training.gradient_accumulation_steps=2", "training.logging_steps=1",
    "training.eval_strategy=no", "training.warmup_steps=1", "generation.max_length=24",
    "model.overrides.hidden_size=64", "model.overrides.intermediate_size=128", "model.overrides.num_attention_heads=4",
    "model.overrides.num_key_value_heads=4",
]


def make(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(["make", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"make {' '.join(args)} failed\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def history(run_dir):
    state = sorted(run_dir.glob("checkpoint-*/trainer_state.json"))[-1]
    return json.loads(state.read_text())["log_history"]


@pytest.mark.slow
@pytest.mark.parametrize("ds_config", ["zero3.json", "zero3_offload.json"])
def test_8x7b_recipe_runs_under_deepspeed_zero3(tmp_path, ds_config):
    args = " ".join([*TINY_8X7B_PATH, f"training.deepspeed=recipes/deepspeed/{ds_config}", f"run.output_root={tmp_path}"])
    proc = make("train-mixtral", "LAUNCHER=deepspeed", "NPROC=1", "RECIPE=recipes/mixtral/finetune-8x7b-zero3.yaml",
                f"ARGS={args}", timeout=900)
    assert "deepspeed.launcher" in proc.stdout + proc.stderr
    run_dir = tmp_path / "mixtral-8x7b" / "zero3"
    ckpt = run_dir / "checkpoint-3"
    assert (ckpt / ".complete").is_file() and list(ckpt.glob("global_step3/*optim_states.pt")), "ZeRO shards saved"
    rows = [e for e in history(run_dir) if "loss" in e]
    assert len(rows) == 3 and all("aux_loss" in r and "lm_loss" in r for r in rows)
    for r in rows:  # loss = LM loss + coef * router loss (coef 0.1 in the config, balanced per layer)
        assert r["loss"] == pytest.approx(r["lm_loss"] + 0.1 * r["aux_loss"], abs=2e-3)
    model = AutoModelForCausalLM.from_pretrained(run_dir / "final")  # gathered 16-bit weights, HF format
    assert type(model).__name__ == "MixtralForCausalLM" and model.config.hidden_size == 64
    log = (run_dir / "final" / "train_log.md").read_text(encoding="utf-8")
    assert "Expert load after training" in log and "| aux_loss | lm_loss |" in log


@pytest.mark.slow
def test_two_processes_through_the_makefile_launcher_end_with_identical_weights(tmp_path):
    args = " ".join([*TINY_8X7B_PATH, "training.activation_checkpointing=false", "training.max_steps=4",
                     f"run.output_root={tmp_path}", "run.name=ddp", "generation.num_beams=5"])
    proc = make("train-mixtral", "NPROC=2", "PUBLISH=no", "RECIPE=recipes/mixtral/pretrain.yaml", f"ARGS={args}")
    assert "torch.distributed.run --nproc_per_node 2" in proc.stdout
    run_dir = tmp_path / "mixtral" / "ddp"
    sums = json.loads((run_dir / "rank_checksums.json").read_text())
    assert len(sums) == 2 and sums[0] == sums[1]
    log = (run_dir / "final" / "train_log.md").read_text(encoding="utf-8")
    assert "2 processes" in log and "2 ranks, identical weights" in log
    # each rank saw different data: the global batch is 2 processes x 2 sequences x 2 accumulation steps
    assert json.loads((run_dir / "checkpoint-4" / "trainer_state.json").read_text())["train_batch_size"] == 2
    # reload the checkpoint and generate with the document's preset (5 beams)
    out = run(["train_mixtral/generate.py", "--root", str(tmp_path), "--run", "ddp", "--prompt", "秋风吹过，"]).stdout
    assert "num_beams=5" in out and "no_repeat_ngram_size=3" in out and "length_penalty=1.2" in out
    assert re.search(r"秋风吹过，\S", out), out[-500:]


def test_mixtral_recipe_mirrors_the_document():
    from shared.config.recipe import load_recipe

    r = load_recipe(REPO / "recipes/mixtral/pretrain.yaml")
    t = r.training
    assert (t["num_train_epochs"], t["per_device_train_batch_size"], t["gradient_accumulation_steps"]) == (50, 12, 6)
    assert (t["learning_rate"], t["weight_decay"], t["save_steps"], t["activation_checkpointing"]) == (5e-5, 0.01, 1000, True)
    g = r.generation
    assert (g["num_beams"], g["temperature"], g["top_k"], g["top_p"], g["repetition_penalty"]) == (5, 0.8, 30, 0.9, 1.5)
    assert (g["no_repeat_ngram_size"], g["length_penalty"], g["max_length"]) == (3, 1.2, 100)
    assert g["prompts"] == ["春天的花园，", "月光下的湖泊，", "山间的小路，", "夏日的午后，", "秋风吹过，"]
    big = load_recipe(REPO / "recipes/mixtral/finetune-8x7b-zero3.yaml").training
    assert (big["per_device_train_batch_size"], big["gradient_accumulation_steps"], big["warmup_steps"]) == (16, 4, 100)
    assert (big["num_train_epochs"], big["eval_steps"], big["logging_steps"]) == (20, 500, 100)
    assert big["deepspeed"] == "recipes/deepspeed/zero3.json"
    lora = load_recipe(REPO / "recipes/mixtral/finetune-8x7b-lora.yaml")
    assert lora.model.lora["r"] > 0


def test_deepspeed_configs_leave_batch_and_precision_to_the_trainer():
    for name, stage, offload in [("zero2", 2, False), ("zero3", 3, False), ("zero3_offload", 3, True)]:
        cfg = json.loads((REPO / f"recipes/deepspeed/{name}.json").read_text())
        z = cfg["zero_optimization"]
        assert z["stage"] == stage
        assert ("offload_optimizer" in z and "offload_param" in z) == offload
        for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
            assert cfg[key] == "auto"
        assert cfg["bf16"]["enabled"] == "auto" and cfg["fp16"]["enabled"] == "auto"


def test_estimate_prints_zero_memory_for_8x7b_and_lora_offline():
    out = make("estimate", "MODEL=mixtral-8x7b").stdout
    assert "46.70B" in out and "12.88B parameters active per token" in out
    assert "CONFIG FALLBACK" in out
    for gpus in (1, 2, 4, 8, 16):
        assert re.search(rf"^\| {gpus} \| [\d.]+ \| [\d.]+ \| [\d.]+ \|", out, re.M)
    assert "LoRA: 13,631,488 trainable" in out
    z3 = dict(re.findall(r"^\| (\d+) \| [\d.]+ \| ([\d.]+) \| [\d.]+ \| \d+ \|$", out, re.M))
    assert float(z3["16"]) < float(z3["8"]) < float(z3["1"])  # ZeRO-3 shards the states


def test_launcher_commands():
    dry = lambda *a: subprocess.run(["make", "-n", "train-mixtral", *a], cwd=REPO, capture_output=True, text=True).stdout
    assert "--publish-log train_mixtral/logs/train_log.md" in dry()
    assert "deepspeed --no_local_rank --num_nodes 1" in dry("LAUNCHER=deepspeed", "NPROC=8")
    multi = dry("LAUNCHER=accelerate", "NPROC=8", "NNODES=2", "NODE_RANK=1", "MASTER_ADDR=10.0.0.1",
                "ACCELERATE_CONFIG=recipes/accelerate/multinode.yaml")
    assert "--num_machines 2 --machine_rank 1 --main_process_ip 10.0.0.1" in multi
    assert "--config_file recipes/accelerate/multinode.yaml" in multi
    torchrun = dry("NPROC=8", "NNODES=2", "NODE_RANK=0", "MASTER_ADDR=10.0.0.1")
    assert "torch.distributed.run --nproc_per_node 8 --nnodes 2 --node_rank 0 --master_addr 10.0.0.1" in torchrun


def test_recipe_chooses_the_experts_implementation():
    from shared.config.errors import UserError
    from shared.models.registry import build_model, model_config
    from shared.config.recipe import load_recipe

    small = ["model.overrides.hidden_size=32", "model.overrides.intermediate_size=32", "model.overrides.num_hidden_layers=1",
             "model.overrides.num_attention_heads=4", "model.overrides.num_key_value_heads=4"]
    for extra, want in (([], "grouped_mm"), (["model.experts_implementation=eager"], "eager")):
        recipe = load_recipe(REPO / "recipes/mixtral/pretrain.yaml", small + extra)
        config = model_config(recipe)
        config.vocab_size = 64
        assert build_model(recipe, config).get_experts_implementation() == {"": want}
    with pytest.raises(UserError, match="experts_implementation"):
        load_recipe(REPO / "recipes/mixtral/pretrain.yaml", ["model.experts_implementation=grouped"])
