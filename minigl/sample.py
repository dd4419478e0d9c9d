"""Complete a prompt with a trained MiniGLM run and its recipe's preset, streamed (the document's sample.py).

    make generate MODEL=minigl [PROMPT="Question: 苇川在哪里？\nAnswer:\n"] [RUN=finetune]
    python minigl/sample.py --run pretrain --prompt 苇川 temperature=0.7
"""
from shared.inference import generate

if __name__ == "__main__":
    generate.run("minigl")
