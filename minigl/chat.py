"""Ask a QA-finetuned MiniGLM run questions in a terminal (shared/inference/chat.py): each question is written in
the run's "Question: ...\\nAnswer:\\n" format and the answer stops at EOS or a next "Question:".

    make chat MODEL=minigl [RUN=finetune] [PROMPT="苇川在哪里？"]
"""
from shared.inference import chat

if __name__ == "__main__":
    chat.run("minigl")
