"""MiniGLM's LSTM baseline: the model is shared/models/lstm.py's LSTMForCausalLM (embedding -> stacked nn.LSTM -> tied
head, registered as `slm_lstm`); its size is minigl/lstm_tiny.json. It trains exactly like the GPT (same bins,
tokenizer, Trainer path and logs), so this entry only picks the LSTM recipes:

    python minigl/lstm_model.py                                  # pretrain: recipes/minigl/lstm.yaml
    python minigl/lstm_model.py recipes/minigl/lstm-finetune.yaml  # the same QA finetune as the GPT's
"""
import train  # minigl/train.py (this script's own folder is on the path)
from shared.config.errors import run_main

if __name__ == "__main__":
    run_main(lambda argv: train.main(argv, "recipes/minigl/lstm.yaml", "MiniGLM LSTM"))
