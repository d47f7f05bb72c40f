"""Playground chat: a conversation with full precision and a quantized model side by side, streamed. Both models
see the same user turns, each with its own earlier answers (as each would be used alone), through the chat
template applied to the whole history; text a user typed never becomes control tokens."""
import queue
import re
import uuid
from collections import OrderedDict
from typing import NoReturn

import streamlit as st

from core.deploy import generate, prompts
from core.deploy.sampling import SamplingSettings
from core.deploy.streams import Failed, Finished, Handle, Text, TextRequest
from core.errors import LabError
from core.models import registry as models
from views._ui import PLAYGROUND_TAGS, deployed, engines, error, mb

PROMPT_KEY = "p_prompt"
REFUSAL_KEY = "p_prompt_refusal"  # a refused message and why, kept over the rerun that puts it back for editing
FULL = "Full precision"
CHAT_ID = re.compile(r"[0-9a-f]{12}")
KEPT_CONVERSATIONS = 64


def history_key(lm_name: str, lm_tag: str) -> str:
    """Where one model pair's conversation lives in session state: switching the pair switches conversations."""
    return f"p_chat:{lm_name}@{lm_tag}"


@st.cache_resource
def _kept_conversations() -> OrderedDict:
    """{browser conversation id: {history key: turns}}, the most recently used last, shared by the sessions of
    this dashboard process: a reload starts a new session, and finds its conversations here."""
    return OrderedDict()


def kept_turns(key: str) -> list[dict]:
    """This session's turns for `key`, kept across reloads: the page's address carries a conversation id
    (?chat=...), and the turns live under it in this process (at most KEPT_CONVERSATIONS ids, oldest let go)."""
    chat = st.query_params.get("chat", "")
    if not CHAT_ID.fullmatch(chat):
        chat = st.query_params["chat"] = uuid.uuid4().hex[:12]
    kept = _kept_conversations()
    mine = kept.setdefault(chat, {})
    kept.move_to_end(chat)
    while len(kept) > KEPT_CONVERSATIONS:
        kept.popitem(last=False)
    if key in st.session_state:
        mine[key] = st.session_state[key]
    else:
        st.session_state[key] = mine.setdefault(key, [])
    return st.session_state[key]


def side_messages(turns: list[dict], title: str, new_text: str) -> list[dict]:
    """One side's conversation: every earlier user message with this side's own answer, then the new message."""
    messages = []
    for turn in turns:
        messages += [{"role": "user", "content": turn["user"]},
                     {"role": "assistant", "content": turn["answers"][title]["text"]}]
    return messages + [{"role": "user", "content": new_text}]


def readout(end: Finished) -> str:
    """Tokens and, where it means something (two tokens or more), decode speed over decode steps only."""
    speed = (f", decode {end.decode_tokens_per_s:.1f} tokens/s" if end.decode_tokens_per_s is not None
             else " (too short to measure decode speed)")
    return (f"{end.completion_tokens} token{'s' if end.completion_tokens != 1 else ''}{speed}, "
            f"first token after {end.first_token_s * 1e3:.0f} ms (prompt {end.prompt_tokens} tokens), "
            f"finished by {end.reason}")


def answer_side_by_side(sides: dict, max_tokens: int, temperature: float) -> dict[str, dict]:
    """Both models answer on the text engine, each panel growing as its tokens arrive; `sides` maps a title to
    (model id, deployed model, prompt tokens). Returns each side's {text, readout, failure}. Leaving the page
    (or a new prompt) stops this script, and `finally` cancels both requests."""
    events: queue.Queue = queue.Queue()
    sampling = SamplingSettings(temperature=temperature, seed=0)
    panels, outcomes, handles = {}, {}, []
    for column, (title, (model_id, model, tokens)) in zip(st.columns(len(sides)), sides.items()):
        column.markdown(f"**{title}** ({mb(model.size_bytes)}, computes in {model.dtype})")
        panels[title] = (column.empty(), column.empty())
        outcomes[title] = {"text": "", "readout": None, "failure": None}
        handle = Handle(lambda event, title=title: events.put((title, event)))
        handles.append(engines().text.submit(TextRequest(model_id, tokens, max_tokens, sampling), handle))
    try:
        open_sides = set(panels)
        while open_sides:
            title, event = events.get(timeout=600)
            (text_box, stats_box), outcome = panels[title], outcomes[title]
            # Told apart by class name: the engines outlive a code reload (st.cache_resource keeps them while
            # Streamlit re-imports edited modules), so their events may come from an earlier import of streams.
            kind = type(event).__name__
            if kind == Text.__name__:
                outcome["text"] += event.text
                text_box.markdown(outcome["text"] + " ▌")
                continue
            open_sides.discard(title)
            text_box.markdown(outcome["text"])
            if kind == Failed.__name__:
                outcome["failure"] = event.message
                stats_box.error(event.message)
            else:
                outcome["readout"] = readout(event)
                stats_box.caption(outcome["readout"])
    finally:
        for handle in handles:
            handle.cancel()
    return outcomes


def as_typed(text: str) -> str:
    """The user's text for st.markdown with its line breaks kept (markdown joins lines that a single newline
    separates)."""
    return text.replace("\n", "  \n")


def render_history(turns: list[dict]) -> None:
    for turn in turns:
        st.chat_message("user").markdown(as_typed(turn["user"]))
        with st.chat_message("assistant"):
            for column, (title, answer) in zip(st.columns(len(turn["answers"])), turn["answers"].items()):
                column.markdown(f"**{title}**")
                column.markdown(answer["text"] or "*(no text: the model ended its answer at once)*")
                column.caption(answer["readout"])


def refuse(message: str, text: str) -> NoReturn:
    """Keep the refused message for editing: st.chat_input empties itself on sending, and its text can only be
    set before it is drawn, so the reason and the text go to session state and the page reruns."""
    st.session_state[REFUSAL_KEY] = {"message": message, "text": text}
    st.rerun()


def prompt_input() -> str | None:
    refusal = st.session_state.pop(REFUSAL_KEY, None)
    if refusal:
        st.error(refusal["message"])
        if refusal["text"].strip():
            st.session_state[PROMPT_KEY] = refusal["text"]  # back in the input, ready to be edited
    # No max_chars: the browser would cut or drop a longer paste without a word; the length is checked here.
    return st.chat_input(f"Ask something (up to {prompts.MAX_PROMPT_CHARS:,} characters)", key=PROMPT_KEY)


def take_turn(text: str, turns: list[dict], pair: tuple[str, str], max_tokens: int, temperature: float) -> None:
    """Send the whole conversation plus the new message to both models and keep the turn once both answered."""
    lm_name, lm_tag = pair
    titles = {FULL: "fp", lm_tag: lm_tag}
    if len(text) > prompts.MAX_PROMPT_CHARS:
        refuse(f"This message is {len(text):,} characters long; the chat takes up to {prompts.MAX_PROMPT_CHARS:,}. "
               "It is back in the box to shorten.", text)
    try:
        generate.check_generation_settings(max_tokens, temperature, 1.0)
        loaded = {title: deployed(lm_name, tag) for title, tag in titles.items()}
        conversations = [side_messages(turns, title, text) for title in titles]
        # Too long a history drops its oldest turns (from both sides alike, with a note) rather than refusing:
        # the chat stays usable without clearing, everything stays on screen, and the note says what the
        # models no longer see. Only a message that cannot fit even alone is refused.
        token_prompts, left_out = prompts.conversation_prompt_tokens(loaded[FULL].tokenizer, conversations)
    except LabError as e:
        refuse(str(e), text)
    st.chat_message("user").markdown(as_typed(text))
    if left_out:
        st.info(f"The oldest {'turn' if left_out == 1 else f'{left_out} turns'} of this conversation no longer "
                f"fit the prompt limit ({prompts.MAX_PROMPT_TOKENS:,} tokens, {prompts.MAX_PROMPT_CHARS:,} "
                "characters), so the models did not see them; clear the conversation to start afresh.")
    sides = {title: (f"{lm_name}@{tag}", loaded[title], tokens)
             for (title, tag), tokens in zip(titles.items(), token_prompts)}
    with st.chat_message("assistant"):
        outcomes = answer_side_by_side(sides, max_tokens, temperature)
    st.caption("Both models decode on the server's continuous-batching engine in one process, taking turns, so "
               "each one's tokens/s is roughly halved; the Quantize page and `./lab eval` measure decode speed alone.")
    if any(o["failure"] for o in outcomes.values()):
        st.warning("This turn was not added to the conversation; send the message again to retry.")
        return
    turns.append({"user": text, "answers": outcomes, "left_out": left_out,
                  "prompt_tokens": {title: len(tokens) for title, tokens in zip(titles, token_prompts)}})


def budget_row(turns: list[dict], key: str) -> None:
    """The token budget of the last prompt and the clear button (usable only when there is something to clear)."""
    info, clear = st.columns([4, 1])
    if turns:
        used = " and ".join(f"{n:,} / {prompts.MAX_PROMPT_TOKENS:,} tokens ({title})"
                            for title, n in turns[-1]["prompt_tokens"].items())
        left_out = turns[-1]["left_out"]
        dropped = ("" if not left_out else " Its oldest turn no longer fits and was not sent." if left_out == 1
                   else f" Its oldest {left_out} turns no longer fit and were not sent.")
        info.caption(f"{len(turns)} turn{'s' if len(turns) != 1 else ''}; the last prompt used {used}. "
                     f"Each new message is sent with the whole conversation.{dropped}")
    else:
        info.caption(f"Prompt budget: {prompts.MAX_PROMPT_TOKENS:,} tokens and {prompts.MAX_PROMPT_CHARS:,} "
                     "characters for the whole conversation, which is sent with each new message.")
    clear.button("Clear conversation", key="p_clear", disabled=not turns, on_click=turns.clear)  # kept copy too


def chat_tab() -> None:
    lm_models = [n for n, i in models.REGISTRY.items() if i.kind == "lm"]
    left, mid, right = st.columns(3)
    lm_name = left.selectbox("Model", lm_models, key="p_lm_model")
    lm_tag = left.selectbox("Quantization", PLAYGROUND_TAGS[1:], index=3, key="p_lm_tag")
    max_tokens = mid.slider("Max new tokens", 1, generate.MAX_NEW_TOKENS, 64, key="p_max_tokens")
    temperature = right.slider("Temperature", 0.0, 2.0, 0.0, 0.05, key="p_temperature")
    key = history_key(lm_name, lm_tag)
    turns = kept_turns(key)
    conversation, footer = st.container(), st.container()  # drawn above the input, filled once it is read
    text = prompt_input()
    with conversation:
        render_history(turns)
        if text is not None:
            try:
                take_turn(text, turns, (lm_name, lm_tag), max_tokens, temperature)
            except Exception as e:  # a bug: one message, the page keeps working (st.rerun passes through)
                error(e)
    with footer:
        budget_row(turns, key)
