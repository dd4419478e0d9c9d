"""Complete a prompt with a trained MiniGLM run and its recipe's preset, streamed (the document's sample.py).

    make generate MODEL=minigl [PROMPT="Question: 苇川在哪里？\nAnswer:\n"] [RUN=finetune]
    python minigl/sample.py --run pretrain --prompt 苇川 temperature=0.7
"""
from shared.inference import generate
from shared.config.errors import run_main

if __name__ == "__main__":
    run_main(lambda argv: generate.main(argv, model_name="minigl"))
