"""Chat with the trained nanoGPT model in the document's format (<user>…<end> / <assistant>…<end>): streamed,
multi-turn (the oldest turns dropped when the context would overflow), /reset, Ctrl-D to leave.

    make chat MODEL=nanogpt [RUN=...] [PROMPT="..." for one answer] [ARGS="temperature=0.7"]
"""
from shared.inference import chat

if __name__ == "__main__":
    chat.run("nanogpt")
