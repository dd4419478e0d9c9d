"""Ask a QA-finetuned MiniGLM run questions in a terminal (shared/inference/chat.py): each question is written in the run's
"Question: ...\\nAnswer:\\n" format and the answer stops at EOS or a next "Question:".

    make chat MODEL=minigl [RUN=finetune] [PROMPT="苇川在哪里？"]
"""
from shared.inference import chat
from shared.config.errors import run_main

if __name__ == "__main__":
    run_main(lambda argv: chat.main(argv, model_name="minigl"))
