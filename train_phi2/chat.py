"""Chat with the trained Phi-2 SFT/DPO model in its ##提问: / ##回答: format: streamed, multi-turn (the oldest turns
dropped when the context would overflow), /reset, Ctrl-D to leave.

    make chat MODEL=phi2 [RUN=...] [PROMPT="..." for one answer] [ARGS="temperature=0.7"]
"""
from shared.inference import chat

if __name__ == "__main__":
    chat.run("phi2")
