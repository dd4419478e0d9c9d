"""shared/eval/metrics.py and minigl/visualize.py on known cases: perplexity with the shift, over every token, answer tokens
only; Chinese Rouge-L by hand; averages over questions; the prompt never scored; key recall; valid PNGs.

Where the MiniGLM document's evaluation gets a case wrong, its method is written out here (`_document_*`) and
both numbers are shown side by side."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import run
from rouge_score.rouge_scorer import RougeScorer
from transformers import (GenerationMixin, GPT2Config, GPT2LMHeadModel, PretrainedConfig, PreTrainedModel,
                          PreTrainedTokenizerFast)
from transformers.modeling_outputs import CausalLMOutputWithPast

from minigl import visualize
from shared.eval import metrics
from shared.config.errors import UserError
from shared.eval.metrics import (IGNORE, ChineseTokenizer, answer_only, answer_only_example, key_recall, perplexity,
                            qa_eval, rouge_l, rouge_l_corpus, rouge_l_score)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is faster than two fighting for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    # wide initial weights: confident, varied predictions, so token losses differ from one another
    config = GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2, initializer_range=0.5,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def sequences(lengths, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 50, (n,), generator=g) for n in lengths]


def hand_loss(model, seqs, first_scored=None) -> tuple[float, int]:
    """Sum of -log p(x[t+1] | x[:t+1]) over every sequence, one sequence at a time (no padding at all);
    `first_scored[i]`: the first position of sequence i whose token is scored (default 1: all but the first)."""
    total, count = 0.0, 0
    for i, ids in enumerate(seqs):
        with torch.no_grad():
            logp = torch.log_softmax(model(ids[None]).logits[0].double(), -1)
        start = 1 if first_scored is None else first_scored[i]
        for t in range(start, len(ids)):
            total -= logp[t - 1, ids[t]].item()
            count += 1
    return total, count


def _document_perplexity(model, batches) -> float:
    """The document's way: logits at the target's own position (no shift), a mean of per-batch means."""
    means = []
    for b in batches:
        with torch.no_grad():
            logits = model(b["input_ids"], attention_mask=b["attention_mask"]).logits
        keep = b["attention_mask"] == 1
        means.append(F.cross_entropy(logits[keep], b["input_ids"][keep]).item())
    return math.exp(sum(means) / len(means))


# ----------------------------------------------------------------------------------------------------------------
# perplexity


def test_perplexity_is_exp_of_mean_shifted_token_loss_over_uneven_padded_batches():
    model = tiny_gpt2()
    seqs = sequences([7, 12, 3, 9, 12])  # batches of 2, 2, 1 (batch_size=2): right-padded to 12, 9, 12
    total, count = hand_loss(model, seqs)
    assert count == sum(len(s) - 1 for s in seqs) == 38
    got = perplexity(model, [{"input_ids": s} for s in seqs], batch_size=2)
    assert got["tokens"] == 38
    assert got["loss"] == pytest.approx(total / count, rel=1e-6)
    assert got["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-6)

    # the same, as ready-made batches (2-D), and padding with a different id changes nothing
    batches = [metrics.pad_batch([{"input_ids": s} for s in seqs[i:i + 2]], pad_token_id=49) for i in (0, 2, 4)]
    assert perplexity(model, batches)["perplexity"] == pytest.approx(got["perplexity"], rel=1e-6)

    # one unpadded batch: the model's own (shifted, mean) loss agrees
    one = torch.stack(sequences([10, 10, 10]))
    with torch.no_grad():
        own = model(one, labels=one).loss.item()
    assert perplexity(model, [{"input_ids": one}])["perplexity"] == pytest.approx(math.exp(own), rel=1e-5)

    # what goes wrong otherwise: a mean of per-batch means (the short last batch weighs as much as a full one)
    per_batch = [hand_loss(model, seqs[i:i + 2]) for i in (0, 2, 4)]
    mean_of_means = math.exp(sum(t / n for t, n in per_batch) / 3)
    document = _document_perplexity(model, batches)  # no shift: predicts each token from itself
    print(f"perplexity: ours {got['perplexity']:.3f} | mean of batch means {mean_of_means:.3f} | "
          f"document (no shift) {document:.3f}")
    assert abs(mean_of_means - got["perplexity"]) > 1e-3 * got["perplexity"]
    assert abs(document - got["perplexity"]) > 1e-2 * got["perplexity"]


def test_shift_labels_windows_score_every_next_token():
    """BinWindows-style examples: input_ids = w[:-1], shift_labels = w[1:] (block_size targets per window)."""
    model = tiny_gpt2()
    windows = sequences([9, 9, 9], seed=3)
    examples = [{"input_ids": w[:-1], "labels": w[:-1], "shift_labels": w[1:]} for w in windows]
    total, count = hand_loss(model, windows)
    got = perplexity(model, examples, batch_size=2)
    assert got["tokens"] == count == 24
    assert got["loss"] == pytest.approx(total / count, rel=1e-6)


def test_answer_only_perplexity_ignores_prompt_tokens():
    model = tiny_gpt2()
    prompt, answer = sequences([6, 4], seed=5)
    ids = torch.cat([prompt, answer])
    example = {"input_ids": ids, "labels": torch.cat([torch.full((6,), IGNORE), answer])}
    total, count = hand_loss(model, [ids], first_scored=[6])
    got = perplexity(model, [example])
    assert got["tokens"] == count == 4
    assert got["loss"] == pytest.approx(total / count, rel=1e-6)
    assert perplexity(model, [{"input_ids": ids}])["tokens"] == 9  # without the mask the prompt is scored too

    # the prompt's labels don't matter, whatever they are: only the answer's are read
    example["labels"][:6] = IGNORE
    assert perplexity(model, [example])["loss"] == pytest.approx(got["loss"], rel=1e-9)
    with pytest.raises(UserError, match="no tokens"):
        perplexity(model, [{"input_ids": ids, "labels": torch.full((10,), IGNORE)}])


def char_tokenizer(text: str) -> PreTrainedTokenizerFast:
    """One token per character of `text` (+ [UNK], [PAD], [EOS])."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["[PAD]", "[EOS]", "[UNK]", *dict.fromkeys(text)])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", eos_token="[EOS]", unk_token="[UNK]")


def test_answer_only_example_labels_the_answer_and_eos():
    tok = char_tokenizer("问苇川在哪答北方")
    ex = answer_only_example(tok, "问苇川在哪答", "北方")
    assert ex["labels"][:6] == [IGNORE] * 6
    assert tok.decode(ex["labels"][6:]) == "北方[EOS]"
    assert ex["input_ids"][:6] == tok("问苇川在哪答").input_ids


# ----------------------------------------------------------------------------------------------------------------
# Rouge-L on Chinese


def _document_rouge(reference: str, prediction: str, tokenizer=None) -> float:
    """rouge-score as the document uses it: its default tokenizer, or whitespace tokens on unsegmented Chinese."""
    class Whitespace:
        def tokenize(self, text):
            return text.split()

    scorer = RougeScorer(["rougeL"], tokenizer=Whitespace() if tokenizer == "whitespace" else None)
    return scorer.score(reference, prediction)["rougeL"].fmeasure


def test_rouge_l_on_chinese_by_hand():
    # LCS of 苇川位于北方 (6) and 苇川在北方 (5) is 苇川北方 (4): P = 4/5, R = 4/6, F = 2*4/(5+6)
    s = rouge_l_score("苇川位于北方", "苇川在北方")
    assert (s.precision, s.recall) == pytest.approx((4 / 5, 4 / 6))
    assert s.fmeasure == pytest.approx(8 / 11)
    assert rouge_l("苇川位于北方", "苇川位于北方") == 1.0
    assert rouge_l("苇川位于北方", "东南西") == 0.0
    assert rouge_l("苇川位于北方", "") == 0.0
    # numbers and Latin words are one token each; punctuation and width don't count
    assert ChineseTokenizer().tokenize("面积１２８６平方公里，GDP 增长。") == \
        ["面", "积", "1286", "平", "方", "公", "里", "gdp", "增", "长"]
    assert rouge_l("面积1286平方公里。", "面积１２８６平方公里") == 1.0
    # 1286 vs 1280: one differing token, not four differing characters
    assert rouge_l("面积1286平方公里", "面积1280平方公里") == pytest.approx(2 * 6 / 14)


def test_document_rouge_gets_chinese_wrong():
    ref, pred = "苇川位于北方", "苇川在北方"
    default, whitespace = _document_rouge(ref, pred), _document_rouge(ref, pred, "whitespace")
    print(f"Rouge-L F of {pred!r} vs {ref!r}: ours {rouge_l(ref, pred):.4f} | rouge-score's default tokenizer "
          f"{default} | whitespace tokens {whitespace}")
    assert default == 0.0  # every Chinese character deleted: nothing left to compare
    assert _document_rouge(ref, ref) == 0.0  # ... even an exact answer scores 0
    assert whitespace == 0.0  # one "word" each: all or nothing
    assert _document_rouge(ref, ref, "whitespace") == 1.0
    assert rouge_l(ref, pred) == pytest.approx(8 / 11)


def _token_weighted_rouge(pairs) -> float:
    """A token-level average: LCS and lengths summed over all questions (long answers dominate)."""
    tok = ChineseTokenizer()
    lcs = sum(rouge_l_score(r, p).precision * len(tok.tokenize(p)) for r, p in pairs)
    n_ref = sum(len(tok.tokenize(r)) for r, _ in pairs)
    n_pred = sum(len(tok.tokenize(p)) for _, p in pairs)
    return 2 * lcs / (n_ref + n_pred)


def test_corpus_rouge_averages_over_questions():
    pairs = [("北方", "北方"),  # F = 1
             ("苇川市人民政府驻于桥东区", "茶顶山海拔四百多米高")]  # 12 vs 10 characters, nothing shared: F = 0
    assert rouge_l_corpus(pairs) == pytest.approx(0.5)
    token_level = _token_weighted_rouge(pairs)  # 2 * 2 / (14 + 12)
    print(f"corpus Rouge-L: per question {rouge_l_corpus(pairs):.4f} | token-weighted {token_level:.4f}")
    assert token_level == pytest.approx(4 / 26)
    with pytest.raises(UserError):
        rouge_l_corpus([])


# ----------------------------------------------------------------------------------------------------------------
# the answer alone; key recall


def test_prompt_is_not_part_of_the_answer():
    prompt = "问：苇川位于哪里？答："
    full = prompt + "北方[EOS]问：下一个问题"
    assert answer_only(prompt, full, stops=["[EOS]"]) == "北方"
    assert answer_only(prompt, prompt + "  北方  \n问：", stops=["问："]) == "北方"
    assert answer_only(prompt, prompt) == ""
    with pytest.raises(ValueError):
        answer_only(prompt, "北方")
    # counting the prompt inflates the score: it repeats the reference's words
    reference = "苇川位于北方"
    wrong = "东南"
    print(f"Rouge-L of a wrong answer {wrong!r}: prompt counted {rouge_l(reference, prompt + wrong):.3f} | "
          f"answer only {rouge_l(reference, wrong):.3f}")
    # the echoed prompt shares 苇川位于 (4 of 10 tokens) with the reference (6): 2 * 4 / 16, for a wrong answer
    assert rouge_l(reference, prompt + wrong) == pytest.approx(0.5) and rouge_l(reference, wrong) == 0.0


@pytest.mark.parametrize("answer,key,hit", [
    ("市域面积为1286平方公里", "1286平方公里", True),
    ("市域面积为１２８６平方公里", "1286平方公里", True),  # full-width digits in the answer
    ("市域面积为1286平方公里", "１２８６平方公里", True),  # ... or in the key
    ("市域面积为 1286 平方 公里", "1286平方公里", True),  # spaces, also U+3000
    ("市域面积为1286\u3000平方公里", "1286 平方公里", True),
    ("GDP增长", "gdp", True),
    ("市域面积为1280平方公里", "1286平方公里", False),
    ("茶顶", "茶顶山", False),
])
def test_key_recall(answer, key, hit):
    assert key_recall(answer, key) is hit


def test_key_recall_rejects_an_empty_key():
    with pytest.raises(UserError, match="empty key"):
        key_recall("anything", " ")


# ----------------------------------------------------------------------------------------------------------------
# qa_eval, with a bigram model whose greedy answers are known


class BigramConfig(PretrainedConfig):
    model_type = "test_bigram"

    def __init__(self, vocab_size: int = 8, **kwargs):
        self.vocab_size = vocab_size
        super().__init__(**kwargs)


class Bigram(PreTrainedModel, GenerationMixin):
    """logits = table[current token]: the next token depends on the last one only."""
    config_class = BigramConfig

    def __init__(self, config):
        super().__init__(config)
        self.table = torch.nn.Parameter(torch.zeros(config.vocab_size, config.vocab_size))
        self.post_init()

    def _init_weights(self, module):
        pass

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        return CausalLMOutputWithPast(logits=self.table[input_ids])


def test_qa_eval_scores_the_generated_answer_only():
    text = "问苇川在哪里？北方东南茶顶山高吗"
    tok = char_tokenizer(text)
    model = Bigram(BigramConfig(vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id)).eval()
    chain = {"？": "北", "北": "方", "方": "[EOS]", "吗": "东", "东": "南", "南": "东"}  # 吗 -> 东南东南... (no EOS)
    with torch.no_grad():
        for a, b in chain.items():
            model.table[tok.convert_tokens_to_ids(a), tok.convert_tokens_to_ids(b)] = 10.0
    questions = [{"id": "q1", "Question": "苇川在哪里？", "Answer": "苇川在北方", "key": "北方"},
                 {"id": "q2", "question": "茶顶山高吗", "answer": "茶顶山很高", "key": "高"},
                 {"id": "q3", "question": "苇川在哪里？", "answer": "北方"}]
    template = "问{question}"
    result = qa_eval(model, tok, questions, template, {"max_new_tokens": 5, "temperature": 0.7, "do_sample": True,
                                                         "use_cache": False})
    rows = {r["id"]: r for r in result["rows"]}
    assert rows["q1"]["answer"] == "北方"  # not "问苇川在哪里？北方": the prompt is cut off; stopped at EOS
    assert rows["q2"]["answer"] == "东南东南东"  # greedy (sampling switched off), max_new_tokens long
    assert rows["q1"]["rouge_l"] == pytest.approx(2 * 2 / (5 + 2))
    assert rows["q2"]["rouge_l"] == 0.0
    assert rows["q3"]["rouge_l"] == 1.0
    assert [rows[q]["key_hit"] for q in ("q1", "q2", "q3")] == [True, False, None]
    assert result["questions"] == 3
    assert result["rouge_l"] == pytest.approx((4 / 7 + 0 + 1) / 3)
    assert result["key_recall"] == 0.5  # over the questions that have a key
    with pytest.raises(UserError, match="field 'topic'"):
        qa_eval(model, tok, questions, "{topic}？")


# ----------------------------------------------------------------------------------------------------------------
# visualize

PNG = b"\x89PNG\r\n\x1a\n"


def history(scale: float, tokens_per_step: int) -> list[dict]:
    out = []
    for step in range(10, 101, 10):
        out.append({"step": step, "loss": scale / step ** 0.3, "num_input_tokens_seen": step * tokens_per_step})
        if step % 50 == 0:
            out.append({"step": step, "eval_loss": scale / step ** 0.25,
                        "num_input_tokens_seen": step * tokens_per_step})
    out.append({"step": 100, "train_loss": 3.0, "train_runtime": 1.0})  # the end-of-training summary: not a point
    return out


def test_visualize_writes_pngs_with_both_models(tmp_path):
    histories = {"transformer": history(8, 4096), "lstm": history(9, 2048)}
    labels = visualize.plot_losses(histories, tmp_path / "losses.png")
    assert labels == ["transformer train", "transformer eval", "lstm train", "lstm eval"]
    assert (tmp_path / "losses.png").read_bytes()[:8] == PNG
    assert visualize._axis(histories, "auto") == "tokens"
    keys = visualize.plot_metrics({"transformer": {"perplexity": 20.5, "rouge_l": 0.31, "key_recall": 0.25},
                                   "lstm": {"perplexity": 41.0, "rouge_l": 0.12}}, tmp_path / "metrics.png")
    assert keys == ["perplexity", "rouge_l", "key_recall"]
    assert (tmp_path / "metrics.png").read_bytes()[:8] == PNG
    with pytest.raises(UserError):
        visualize.plot_losses({"empty": [{"step": 1}]}, tmp_path / "none.png")


def test_visualize_cli_reads_metrics_json_and_run_folders(tmp_path):
    # a run with a checkpoint's trainer_state.json, another with only final/train_log.md (shared/training/runlog.py's table)
    ckpt = tmp_path / "runs" / "gpt" / "checkpoint-100"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 100, "log_history": history(8, 4096)}))
    final = tmp_path / "runs" / "lstm" / "final"
    final.mkdir(parents=True)
    (final / "train_log.md").write_text(
        "# LSTM\n\n- **date**: today\n\n## Training log\n\n| step | epoch | train loss | eval loss | lr |\n"
        "|---|---|---|---|---|\n| 10 | 0.1 | 5.0 | – | 1e-3 |\n| 20 | 0.2 | 4.5 | 4.7 | 1e-3 |\n"
        "\n![loss curve](loss.png)\n\n## Final evaluation\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    assert visualize.run_history(final) == [{"step": 10, "loss": 5.0}, {"step": 20, "loss": 4.5},
                                            {"step": 20, "eval_loss": 4.7}]
    doc = {"transformer": {"perplexity": 20.5, "rouge_l": 0.31, "key_recall": 0.25, "run": str(ckpt.parent)},
           "lstm": {"perplexity": 41.0, "rouge_l": 0.12, "key_recall": 0.05, "run": str(final.parent)}}
    (tmp_path / "metrics.json").write_text(json.dumps(doc))
    out = tmp_path / "figs"
    proc = run(["minigl/visualize.py", str(tmp_path / "metrics.json"), "--out", str(out)])
    assert "transformer, lstm" in proc.stdout
    for name in ("losses.png", "metrics.png"):
        assert (out / name).read_bytes()[:8] == PNG
    bad = run(["minigl/visualize.py", str(tmp_path / "nothing.json")], check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
