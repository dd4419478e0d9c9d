"""A web page for a trained MiniGLM run (the document's sample_gradio.py): prompt box, temperature / top-k / length
sliders, the answer streamed; a QA-finetuned run is asked in its "Question: ... Answer:" format
(shared/inference/webui.py).

    make gradio-minigl [RUN=finetune] [PORT=7861]
"""
from shared.inference import webui

if __name__ == "__main__":
    webui.run("minigl")
