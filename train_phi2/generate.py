"""Complete a prompt with the newest Phi-2 model (pretrain, SFT or DPO run) and its preset: the document's greedy
search with no_repeat_ngram_size=4, stopping at [EOS], at most the run's max_new_tokens (pretrain 256, SFT and DPO 128).

    make generate MODEL=phi2 [PROMPT="苇川的春天"] [RUN=pretrain]
"""
from shared.inference import generate

if __name__ == "__main__":
    generate.run("phi2")
