"""Write poems with the trained Phi-3 model and the document's preset (temperature, top-k/p, repetition penalty).

    make generate MODEL=phi3 [PROMPT="春天来了，"] [RUN=poetry] [ARGS="temperature=0.7"]
"""
from shared.inference import generate

if __name__ == "__main__":
    generate.run("phi3")
