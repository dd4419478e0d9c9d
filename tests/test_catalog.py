"""The model table (shared/config/catalog.py) and the Makefile that reads it: every row points at files that exist,
the wrapper scripts name their own row, make generate / chat / serve / export and make help take their models from
it; the Makefile reads as a table (short lines, one stage graph that covers what the recipes read); PORT reaches
the servers."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.compare import ARCHS
from shared.config import catalog
from shared.config.errors import UserError

REPO = Path(__file__).resolve().parent.parent
VENV = f"VENV={Path(sys.executable).parent.parent}"
MAKEFILE = (REPO / "Makefile").read_text(encoding="utf-8")
TARGETS = set(re.findall(r"^([a-zA-Z0-9_-]+):", MAKEFILE, re.M))


def make(*args: str) -> subprocess.CompletedProcess:
    """make without the set-up step (STAMP=): these checks never install anything."""
    return subprocess.run(["make", "--no-print-directory", VENV, "STAMP=", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


# the table


def test_every_row_points_at_files_and_targets_that_exist():
    for m in catalog.MODELS.values():
        assert (REPO / m.folder / "train.py").is_file(), m.name
        assert (REPO / m.generate).is_file(), m.name
        assert (REPO / m.folder / "chat.py").is_file() == m.chat, f"{m.name}: chat={m.chat} but chat.py disagrees"
        assert (REPO / m.recipe).is_file() and f"train-{m.name}" in TARGETS, m.name
        runs = [yaml_run_name(p) for p in (REPO / "recipes" / m.name).glob("*.yaml")]
        assert m.run in runs, f"{m.name}: no recipe in recipes/{m.name}/ writes the run {m.run!r}"


def yaml_run_name(path: Path) -> str | None:
    import yaml

    return ((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("run") or {}).get("name")


def test_the_wrappers_name_their_own_row_once():
    scripts = {m.generate: ("generate", m.name) for m in catalog.MODELS.values()}
    scripts |= {m.chat_script: ("chat", m.name) for m in catalog.MODELS.values() if m.chat}
    scripts["minigl/sample_gradio.py"] = ("webui", "minigl")
    for path, (module, name) in scripts.items():
        text = (REPO / path).read_text(encoding="utf-8")
        calls = [n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Call)]
        assert [(ast.unparse(c.func), [a.value for a in c.args]) for c in calls] == [(f"{module}.run", [name])], path
        assert len(text.splitlines()) <= 10, f"{path} is a wrapper: a docstring and one call"


def test_the_table_is_light_and_says_which_models_there_are():
    code = "import sys, shared.config.catalog; print(sorted(m for m in sys.modules if m.startswith(('torch', 'yaml'))))"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"
    assert catalog.script("generate", "minigl") == "minigl/sample.py"
    assert catalog.script("chat", "phi2") == "train_phi2/chat.py"
    with pytest.raises(UserError, match="unknown MODEL=nope; the models: phi3, mixtral, phi2, nanogpt, minigl"):
        catalog.script("generate", "nope")
    with pytest.raises(UserError, match="MODEL=phi3 has no chat; the chat models: phi2, nanogpt, minigl"):
        catalog.script("chat", "phi3")


def test_serve_and_export_take_the_models_or_a_folder_under_runs(tmp_path):
    (tmp_path / "tiny").mkdir()
    catalog.check("tiny", tmp_path)
    catalog.check("phi2", tmp_path)  # a known model without runs: find_run says how to train it
    with pytest.raises(UserError, match=r"unknown model 'nope'; the models: phi3, .*minigl \(or a folder under"):
        catalog.check("nope", tmp_path)


def test_compare_architectures_live_in_the_models_folders():
    folders = {m.folder for m in catalog.MODELS.values()}
    assert {script.split("/")[0] for script in ARCHS.values()} == folders, "every model is compared"
    for name, script in ARCHS.items():
        assert (REPO / script).is_file() and (REPO / "recipes" / "compare" / f"{name}.yaml").is_file(), name


# the Makefile


def test_make_generate_and_chat_run_the_tables_scripts_and_refuse_unknown_models_in_one_line():
    for m in catalog.MODELS.values():
        assert f"$(PY) {m.generate} " in dry_run("generate", f"MODEL={m.name}")
        if m.chat:
            assert f"$(PY) {m.chat_script} " in dry_run("chat", f"MODEL={m.name}")
    proc = make("generate", "MODEL=nope")
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0] == "error: unknown MODEL=nope; the models: phi3, mixtral, phi2, nanogpt, minigl"
    proc = make("chat", "MODEL=mixtral")
    assert proc.returncode == 2 and proc.stderr.startswith("error: MODEL=mixtral has no chat; the chat models: phi2,")


def dry_run(*args: str) -> str:
    """make -n's commands, with the venv's python written as $(PY)."""
    proc = make("-n", *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.replace(f"{Path(sys.executable).parent.parent}/bin/python", "$(PY)") + "\n"


def test_make_help_lists_every_model():
    out = make("help").stdout
    rows = [line.split()[0] for line in out[out.index("\nModels: MODEL=<name>"):].splitlines()[2:]]
    assert rows == list(catalog.MODELS)


def test_every_makefile_line_is_under_120_characters():
    long = [f"{i}: {len(line)}" for i, line in enumerate(MAKEFILE.splitlines(), 1) if len(line) >= 120]
    assert not long, f"Makefile lines of 120 characters or more: {long}"


def test_help_text_continues_on_double_hash_lines():
    out = make("help").stdout
    assert re.search(r"make rag-eval +retrieval recall@k.*\n {32}Rouge-L, SFT vs RAG-SFT", out)


def test_port_reaches_the_servers():
    assert "-m shared.inference.serve phi2 --port 8123 " in dry_run("serve", "MODEL=phi2", "PORT=8123")
    assert "-m shared.inference.serve phi2 --port 8000 " in dry_run("serve", "MODEL=phi2")
    assert "minigl/sample_gradio.py --port 7999 " in dry_run("gradio-minigl", "PORT=7999")
    assert "--port" not in dry_run("gradio-minigl")  # the web page's own default, 7860


def stage_table(*variables: str) -> dict:
    """The Makefile's stages: {stage: (make target, build command, needs)}."""
    show = 'show-stages: ; @$(foreach s,$(STAGES),echo "$(s)|$($(s).make)|$($(s).build)|$($(s).needs)";)'
    out = make("-s", f"--eval={show}", "show-stages", *variables).stdout
    return {s: (t, b.split(), n.split()) for s, t, b, n in (line.split("|") for line in out.splitlines())}


@pytest.mark.parametrize("size", ["", "gpu"])
def test_the_stage_graph_covers_what_every_recipe_reads(size):
    """Each stage's row: its target exists, its script and recipe exist, the recipe writes runs/<stage>/, and every
    run the recipe reads (init_from, tokenizer, data, ...) is a stage its needs reach."""
    from shared.config.recipe import load_recipe

    stages = stage_table(f"PHI2_SIZE={size}")
    assert {"phi2-gpu/sft" if size else "phi2/sft", "nanogpt/finetune-data", "minigl/lstm-finetune"} <= set(stages)
    for stage, (target, build, needs) in stages.items():
        assert target in TARGETS, stage
        script, recipe_path = build[:2]
        assert (REPO / script).is_file(), stage
        recipe = load_recipe(REPO / recipe_path)
        assert recipe.run_dir == REPO / "runs" / stage, f"{recipe_path} writes {recipe.run_dir}, not runs/{stage}"
        assert set(needs) <= set(stages), f"{stage} needs a stage with no row: {set(needs) - set(stages)}"
        reads = {m.group(1) for text in strings(recipe.to_dict(redact=False))
                 for m in [re.match(r"runs/([^/]+/[^/]+)", text)] if m}
        assert reads <= reachable(stage, stages), f"{recipe_path} reads {reads - reachable(stage, stages)}"


def strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from strings(v)
    elif isinstance(value, str):
        yield value


def reachable(stage: str, stages: dict) -> set:
    todo, seen = list(stages[stage][2]), set()
    while todo:
        s = todo.pop()
        if s not in seen:
            seen.add(s)
            todo += stages[s][2]
    return seen


def test_stage_targets_read_their_stages_from_the_table():
    """A stage's own target waits for the stages its row needs (the graph is written once, in the table)."""
    for stage, (target, _, needs) in stage_table().items():
        if stage.startswith("minigl/") and target == "minigl-data":
            continue  # one target that builds jynews, zhihu and data itself
        line = re.search(rf"^{re.escape(target)}:([^#\n]*)", MAKEFILE, re.M).group(1)
        if target == "train-minigl-lstm" and stage == "minigl/lstm-finetune":
            continue  # the target's second step: its first (minigl/lstm) names the target's needs
        assert (f"$(call needs,{stage.replace('phi2/', '$(P2)/')})" in line) == bool(needs), (stage, line)
