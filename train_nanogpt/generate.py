"""Complete a prompt with the trained nanoGPT model and the recipe's preset (nanoGPT's sample.py: temperature 0.8,
top-k 200), streamed; the KV cache makes each new token one small forward pass.

    make generate MODEL=nanogpt [PROMPT="<user>Hello, how are you?<end>\n<assistant>"] [RUN=finetune]
"""
from shared.inference import generate

if __name__ == "__main__":
    generate.run("nanogpt")
