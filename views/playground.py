"""Playground: classify an image or chat, full precision and a quantized model side by side."""
import queue

import pandas as pd
import streamlit as st
from PIL import Image

from core import data
from core.deploy import classify as vision
from core.deploy import generate, prompts
from core.deploy.streams import Failed, Finished, Handle, Text, TextRequest
from core.deploy.sampling import SamplingSettings
from core.models import registry as models
from views._ui import PLAYGROUND_TAGS, deployed, engines, error, mb

st.title("Playground")
vision_tab, chat_tab = st.tabs(["Image", "Chat"])


def top5_panel(column, title: str, result: vision.Classification) -> None:
    column.markdown(f"**{title}** — {result.latency_ms:.1f} ms")
    column.bar_chart(pd.DataFrame({"probability": [p for _, p in result.top_k(5)]},
                                  index=[c for c, _ in result.top_k(5)]), horizontal=True, height=220)


def answer_side_by_side(tokens: list[int], max_tokens: int, temperature: float, sides: dict) -> None:
    """Both models answer the same prompt on the text engine; each panel grows as its tokens arrive. Leaving
    the page (or a new prompt) cancels both requests."""
    events: queue.Queue = queue.Queue()
    sampling = SamplingSettings(temperature=temperature, seed=0)
    panels, handles = {}, []
    for column, (title, (model_id, model)) in zip(st.columns(len(sides)), sides.items()):
        column.markdown(f"**{title}** ({mb(model.size_bytes)}, computes in {model.dtype})")
        panels[title] = (column.empty(), column.empty(), [""])
        handle = Handle(lambda event, title=title: events.put((title, event)))
        handles.append(engines().text.submit(TextRequest(model_id, tokens, max_tokens, sampling), handle))
    try:
        open_sides = set(panels)
        while open_sides:
            title, event = events.get(timeout=600)
            text_box, stats_box, text = panels[title]
            if isinstance(event, Text):
                text[0] += event.text
                text_box.markdown(text[0] + " ▌")
                continue
            open_sides.discard(title)
            if isinstance(event, Failed):
                stats_box.error(event.message)
                continue
            text_box.markdown(text[0])
            stats_box.caption(_readout(event))
    finally:
        for handle in handles:
            handle.cancel()


def _readout(end: Finished) -> str:
    """Tokens and, where it means something (two tokens or more), decode speed over decode steps only."""
    speed = (f", decode {end.decode_tokens_per_s:.1f} tokens/s" if end.decode_tokens_per_s is not None
             else " (too short to measure decode speed)")
    return (f"{end.completion_tokens} token{'s' if end.completion_tokens != 1 else ''}{speed}, "
            f"first token after {end.first_token_s * 1e3:.0f} ms (prompt {end.prompt_tokens} tokens), "
            f"finished by {end.reason}")


with vision_tab:
    vision_models = [n for n, i in models.REGISTRY.items() if i.kind == "vision"]
    left, right = st.columns(2)
    name = left.selectbox("Model", vision_models, index=vision_models.index(models.default_vision_model()),
                          key="p_vision_model")
    tag = right.selectbox("Quantization", PLAYGROUND_TAGS[1:], index=3, key="p_vision_tag")
    source = st.radio("Image", ["Upload", "Test-set sample"], horizontal=True, key="p_source")
    image32 = None
    try:
        if source == "Upload":
            upload = st.file_uploader("PNG or JPEG, any size (it is cropped to a square and resized to 32x32)",
                                      type=["png", "jpg", "jpeg"], key="p_upload")
            if upload is not None:
                original = vision.read_image(upload.getvalue())
                image32 = vision.to_cifar_input(original)
                st.caption(f"Uploaded {original.size[0]}x{original.size[1]} ({upload.name})")
        else:
            index = st.number_input("Test image number (0-9999)", 0, 9999, value=0, key="p_index")
            images, labels = data.load_cifar10("test")
            image32 = images[int(index)]
            st.caption(f"True class: {data.CIFAR10_CLASSES[labels[int(index)]]}")
        if image32 is not None:
            st.image(Image.fromarray(image32).resize((128, 128), Image.Resampling.NEAREST),
                     caption="What the model sees: 32x32 (shown 4x)")
            full, quantized = deployed(name, "fp"), deployed(name, tag)
            a, b = st.columns(2)
            top5_panel(a, f"Full precision ({mb(full.size_bytes)})", vision.classify(full.model, image32))
            top5_panel(b, f"{tag} ({mb(quantized.size_bytes)}, {quantized.bits_per_weight:.2f} bits/weight, {quantized.dtype})",
                       vision.classify(quantized.model, image32))
    except Exception as e:  # LabError or a bug: one message, the page keeps working
        error(e)

with chat_tab:
    lm_models = [n for n, i in models.REGISTRY.items() if i.kind == "lm"]
    left, mid, right = st.columns(3)
    lm_name = left.selectbox("Model", lm_models, key="p_lm_model")
    lm_tag = left.selectbox("Quantization", PLAYGROUND_TAGS[1:], index=3, key="p_lm_tag")
    max_tokens = mid.slider("Max new tokens", 1, generate.MAX_NEW_TOKENS, 64, key="p_max_tokens")
    temperature = right.slider("Temperature", 0.0, 2.0, 0.0, 0.05, key="p_temperature")
    prompt = st.chat_input("Ask something", key="p_prompt")
    if prompt is not None:
        try:
            generate.check_generation_settings(max_tokens, temperature, 1.0)
            full, quantized = deployed(lm_name, "fp"), deployed(lm_name, lm_tag)
            tokens = prompts.chat_prompt_tokens(full.tokenizer, [{"role": "user", "content": prompt}])
            st.chat_message("user").write(prompt)
            answer_side_by_side(tokens, max_tokens, temperature,
                                {"Full precision": (f"{lm_name}@fp", full), lm_tag: (f"{lm_name}@{lm_tag}", quantized)})
            st.caption("Both models decode on the server's continuous-batching engine in one process, taking turns, "
                       "so each one's tokens/s is roughly halved; the Quantize page and `./lab eval` measure decode "
                       "speed alone.")
        except Exception as e:  # LabError or a bug: one message, the page keeps working
            error(e)
