"""Chat with the trained Phi-2 SFT/DPO model in its ##提问: / ##回答: format: streamed, multi-turn (the oldest turns
dropped when the context would overflow), /reset, Ctrl-D to leave.

    make chat MODEL=phi2 [RUN=...] [PROMPT="..." for one answer] [ARGS="temperature=0.7"]
"""
from shared.inference import chat
from shared.config.errors import run_main

if __name__ == "__main__":
    run_main(lambda argv: chat.main(argv, model_name="phi2"))
