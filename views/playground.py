"""Playground: classify an image or chat, full precision and a quantized model side by side."""
import streamlit as st

from views._playground_chat import chat_tab
from views._playground_vision import vision_tab

st.title("Playground")
image_tab, conversation_tab = st.tabs(["Image", "Chat"])
with image_tab:
    vision_tab()
with conversation_tab:
    chat_tab()
