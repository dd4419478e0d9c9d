"""Poems from the trained Mixtral with the document's preset (5 beams, sampling, repetition and n-gram limits).

    make generate MODEL=mixtral [PROMPT="秋风吹过，"] [RUN=poetry] [ARGS="num_beams=1"]
"""
from shared.inference import generate

if __name__ == "__main__":
    generate.run("mixtral")
