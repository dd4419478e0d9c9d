"""Two ways a bins run used to fail, each on a tiny GPT trained for 2 steps in this process:
- a tokenizer without a pad token crashed in the Trainer's padding collator (fixed-length windows need none);
- a generation prompt the tokenizer can't encode crashed the samples after training, and any failure in the log's
  extras (samples, extra sections) lost the finished model: final/ was never written."""
from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from shared.data import bins
from shared.training import train
from shared.config.errors import UserError
from shared.models.gpt import GPTConfig, GPTForCausalLM
from shared.data.hub import Provenance
from shared.config.recipe import load_recipe

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40


def char_tokenizer_without_pad() -> PreTrainedTokenizerFast:
    """One token per character of TEXT + an EOS; no pad token and no [UNK] (an unseen character can't be encoded)."""
    vocab = {c: i for i, c in enumerate(sorted(set(TEXT)))}
    vocab["<eos>"] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", clean_up_tokenization_spaces=False)


@pytest.fixture
def char_run(tmp_path):
    """(recipe, model, data) for a 2-step bins run whose tokenizer has no pad token."""
    tok = char_tokenizer_without_pad()
    assert tok.pad_token is None and tok.pad_token_id is None
    n = int(len(TEXT) * 0.9)
    folder = tmp_path / "bins"
    bins.write_bins(folder, {"train": Dataset.from_dict({"text": [TEXT[:n]]}),
                             "val": Dataset.from_dict({"text": [TEXT[n:]]})}, tok, num_proc=1)
    recipe = load_recipe("recipes/nanogpt/pretrain.yaml", [
        f"run.output_root={tmp_path / 'runs'}", "training.max_steps=2", "training.logging_steps=1",
        "training.per_device_train_batch_size=4", "training.save_steps=2", "training.eval_steps=2",
        "training.warmup_steps=0", "data.block_size=16", "generation.prompts=[]", "generation.max_new_tokens=4"])
    val = bins.BinWindows(folder / "val.bin", 16, tiled=True)
    data = train.Data(tok, bins.BinWindows(folder / "train.bin", 16, 8, seed=1), val, Provenance(source="test bins"),
                      Provenance(source="test char tokenizer"), eval_during=val)
    torch.manual_seed(0)
    model = GPTForCausalLM(GPTConfig(vocab_size=len(tok), block_size=32, n_layer=1, n_head=2, n_embd=16))
    return recipe, model, data


@pytest.mark.slow
def test_a_bins_run_whose_tokenizer_has_no_pad_token_trains_and_saves(char_run):
    recipe, model, data = char_run
    train.train(recipe, model, data, title="no pad token", trainer_cls=train.NoDecayOnEmbeddingsTrainer)
    final = recipe.run_dir / "final"
    assert (final / "stage.json").is_file() and (final / "model.safetensors").is_file()
    assert "eval_loss" in (final / "train_log.md").read_text(encoding="utf-8")


def test_a_prompt_the_tokenizer_cannot_encode_is_one_line_naming_the_character():
    from shared.inference.generate import check_prompts

    tok = char_tokenizer_without_pad()
    check_prompts({"prompts": ["First", "\n"]}, tok, "r.yaml:40", context=32)  # fine
    with pytest.raises(UserError) as e:
        check_prompts({"prompts": ["First", "ROMEO ñ:"]}, tok, "r.yaml:40", context=32)
    assert str(e.value).startswith("r.yaml:40: generation.prompts[1] 'ROMEO ñ:' has 'R', which the tokenizer "
                                   "cannot encode") and "\n" not in str(e.value)
    with pytest.raises(UserError, match=r"generation.prompts\[0\] is 40 tokens, the model's context is 32"):
        check_prompts({"prompts": ["speak" * 8]}, tok, "r.yaml:40", context=32)


@pytest.mark.slow
def test_unencodable_prompts_stop_the_run_before_it_trains(char_run):
    recipe, model, data = char_run
    data.tokenizer.pad_token = "<eos>"  # (this test is about the prompt, not the padding collator)
    recipe.generation["prompts"] = ["First", "Speak, ñ"]
    with pytest.raises(UserError, match=r"generation.prompts\[1\] 'Speak, ñ' has 'ñ', which the tokenizer cannot"):
        train.train(recipe, model, data, title="bad prompt", trainer_cls=train.NoDecayOnEmbeddingsTrainer)
    assert not recipe.run_dir.exists() or not list(recipe.run_dir.glob("checkpoint-*"))  # nothing was trained


@pytest.mark.slow
def test_a_failure_in_the_logs_extras_never_loses_the_finished_model(char_run, capsys):
    recipe, model, data = char_run
    data.tokenizer.pad_token = "<eos>"  # (this test is about the extras, not the padding collator)
    recipe.generation["prompts"] = ["First"]

    def extra_sections(m):
        raise RuntimeError("boom in an extra section")

    train.train(recipe, model, data, title="extras fail", trainer_cls=train.NoDecayOnEmbeddingsTrainer,
                extra_sections=extra_sections)
    final = recipe.run_dir / "final"
    assert (final / "stage.json").is_file() and (final / "model.safetensors").is_file()
    log = (final / "train_log.md").read_text(encoding="utf-8")
    assert "## Extra sections\n\n**Failed after training** (RuntimeError: boom in an extra section)" in log
    assert "## Samples (the model's generation preset)\n\n**First**" in log  # the samples still ran
    assert "warning: extra sections failed after training (RuntimeError: boom" in capsys.readouterr().out
