"""Playground image tab: an uploaded PNG or JPEG (or a test image) classified by full precision and a quantized
model side by side; each top-5 is drawn most probable first with its probabilities written on the bars."""
import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from core import data
from core.deploy import classify as vision
from core.errors import LabError
from core.models import registry as models
from views._ui import PLAYGROUND_TAGS, deployed, error, mb, model_label

UPLOAD_ROUND = "p_upload_round"  # part of the uploader's key: a new round is a new, empty uploader
REJECTION = "p_upload_rejection"  # why the last file was refused, shown after the rerun that empties the uploader

# Bars sorted by probability (highest on top) with the value written after each bar; the axis runs past 100 %
# so that a label next to a full bar stays inside the chart.
TOP5_SPEC = {
    "height": 180,
    "encoding": {
        "y": {"field": "class", "type": "nominal", "sort": "-x", "title": None},
        "x": {"field": "probability", "type": "quantitative", "title": "probability",
              "scale": {"domain": [0, 1.2]}, "axis": {"format": ".0%", "values": [0, 0.25, 0.5, 0.75, 1]}},
    },
    "layer": [
        {"mark": {"type": "bar"}},
        {"mark": {"type": "text", "align": "left", "dx": 4},
         "encoding": {"text": {"field": "probability", "type": "quantitative", "format": ".1%"}}},
    ],
}


def top5_panel(column, title: str, result: vision.Classification) -> None:
    column.markdown(f"**{title}** — {result.latency_ms:.1f} ms")
    rows = pd.DataFrame(result.top_k(5), columns=["class", "probability"])  # already most probable first
    column.vega_lite_chart(rows, TOP5_SPEC, width="stretch")


def uploaded_image() -> np.ndarray | None:
    """The upload as a 32x32 input, or None. A refused file is reported in words and taken out of the uploader
    (a new, empty uploader replaces it): no earlier result stays on screen to be read as this file's answer,
    refused files do not pile up, and the next file can be dropped straight away."""
    upload_round = st.session_state.setdefault(UPLOAD_ROUND, 0)
    upload = st.file_uploader(f"PNG or JPEG, up to {vision.MAX_UPLOAD_BYTES // 2**20} MB and "
                              f"{vision.MAX_MEGAPIXELS} megapixels (it is cropped to a square and resized to 32x32)",
                              key=f"p_upload_{upload_round}")  # any file: a refusal here is in words, on screen
    if upload is None:
        if st.session_state.get(REJECTION):
            st.error(st.session_state[REJECTION])
        return None
    try:
        original = vision.read_image(upload.getvalue())
    except LabError as e:
        st.session_state[REJECTION] = f"{upload.name} was not used. {e}"
        st.session_state[UPLOAD_ROUND] = upload_round + 1
        st.rerun()
    st.session_state.pop(REJECTION, None)
    st.caption(f"Uploaded {original.size[0]}x{original.size[1]} ({upload.name})")
    return vision.to_cifar_input(original)


def _random_index() -> None:
    st.session_state["p_index"] = int(np.random.default_rng().integers(0, 10000))


def sample_image() -> np.ndarray:
    st.session_state.pop(REJECTION, None)  # the refusal was about an upload; it would only confuse here
    number, pick = st.columns([3, 1], vertical_alignment="bottom")
    pick.button("Random image", key="p_random", on_click=_random_index,
                help="The test set is stored class by class: a random number shows every class in turn.")
    index = number.number_input("Test image number (0-9999)", 0, 9999, value=0, key="p_index")
    images, labels = data.load_cifar10("test")
    st.caption(f"True class: {data.CIFAR10_CLASSES[labels[int(index)]]}")
    return images[int(index)]


def show_results(name: str, tag: str, image32: np.ndarray) -> None:
    st.image(Image.fromarray(image32).resize((128, 128), Image.Resampling.NEAREST),
             caption="What the model sees: 32x32 (shown 4x)")
    full, quantized = deployed(name, "fp"), deployed(name, tag)
    left, right = st.columns(2)
    top5_panel(left, f"Full precision ({mb(full.size_bytes)})", vision.classify(full.model, image32))
    top5_panel(right, f"{tag} ({mb(quantized.size_bytes)}, {quantized.bits_per_weight:.2f} bits/weight, "
                      f"{quantized.dtype})", vision.classify(quantized.model, image32))


def vision_tab() -> None:
    vision_models = [n for n, i in models.REGISTRY.items() if i.kind == "vision"]
    left, right = st.columns(2)
    name = left.selectbox("Model", vision_models, index=vision_models.index(models.default_vision_model()),
                          key="p_vision_model", format_func=model_label)
    tag = right.selectbox("Quantization", PLAYGROUND_TAGS[1:], index=3, key="p_vision_tag")
    source = st.radio("Image", ["Upload", "Test-set sample"], horizontal=True, key="p_source")
    try:
        image32 = uploaded_image() if source == "Upload" else sample_image()
        if image32 is not None:
            show_results(name, tag, image32)
    except Exception as e:  # LabError or a bug: one message, the page keeps working (st.rerun passes through)
        error(e)
