"""Poems from the trained Mixtral with the document's preset (5 beams, sampling, repetition and n-gram limits).

    make generate MODEL=mixtral [PROMPT="秋风吹过，"] [RUN=poetry] [ARGS="num_beams=1"]
"""
from shared.inference import generate
from shared.config.errors import run_main

if __name__ == "__main__":
    run_main(lambda argv: generate.main(argv, model_name="mixtral"))
