"""Chatbot Arena: the same prompt to two models side by side, then a vote.

Battle: two models drawn at random, anonymous until the vote. Side-by-side: two models the user
picks, named all along. Multi-turn: each side keeps its own conversation until the vote.
"""

from __future__ import annotations

import asyncio
import contextlib

import gradio as gr

from parley.errors import ParleyError
from parley.web.arena import pick_pair
from parley.web.model_client import ReplyParams
from parley.web.replies import StreamedReply
from parley.web.services import WebServices
from parley.web.user_input import check_input

VOTES = (("A is better", "model_a"), ("B is better", "model_b"), ("Tie", "tie"), ("Both are bad", "tie (bothbad)"))


def build(services: WebServices, anonymous: bool, prefix: str) -> dict:
    state = gr.State({})  # models, conversations, voted
    pending = gr.State(False)
    if anonymous:
        gr.Markdown("Two anonymous models answer your prompt. Vote for the better one; their names are revealed "
                    "after you vote. Keep chatting over several turns before voting if you like.")
        picks = []
    else:
        gr.Markdown("Pick two models, chat with both at once, and vote.")
        with gr.Row():
            picks = [gr.Dropdown(label="Model A", elem_id=f"{prefix}-model-a"),
                     gr.Dropdown(label="Model B", elem_id=f"{prefix}-model-b")]
    with gr.Row():
        chat_a = gr.Chatbot(label="Model A", height=420, elem_id=f"{prefix}-a")
        chat_b = gr.Chatbot(label="Model B", height=420, elem_id=f"{prefix}-b")
    names = gr.Markdown(elem_id=f"{prefix}-names")
    with gr.Row():
        vote_buttons = [gr.Button(label, interactive=False, elem_id=f"{prefix}-vote-{kind.replace(' ', '-')}")
                        for label, kind in VOTES]
    with gr.Row():
        text = gr.Textbox(placeholder="Ask both models (Enter)", show_label=False, scale=8, elem_id=f"{prefix}-input")
        send = gr.Button("Send", variant="primary", scale=1, elem_id=f"{prefix}-send")
    with gr.Row():
        new_round = gr.Button("New round", elem_id=f"{prefix}-new-round")
        stop = gr.Button("Stop", elem_id=f"{prefix}-stop")
    notice = gr.Markdown(elem_id=f"{prefix}-notice")
    with gr.Accordion("Parameters", open=False):
        temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature")
        top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top P")
        max_tokens = gr.Slider(16, 2048, value=256, step=16, label="Max output tokens")

    async def user_turn(message, st, a_value, b_value, chosen: tuple, request: gr.Request):
        user = await asyncio.to_thread(services.user, request)
        keep = [gr.skip()] * len(vote_buttons)
        if st.get("voted"):
            return message, st, a_value, b_value, "You voted on this round: start a new round.", False, *keep
        turns = sum(1 for m in a_value or [] if m["role"] == "user")
        problem = check_input(message or "", turns, services.settings.limits, services.moderator)
        if problem:
            return message, st, a_value, b_value, f"⚠ {problem}", False, *keep
        if not st.get("models"):
            try:
                if anonymous:
                    models = pick_pair(await services.client.list_models(), services.settings.battle_weights)
                else:
                    if not all(chosen) or chosen[0] == chosen[1]:
                        raise ParleyError("pick two different models")
                    models = tuple(chosen)
            except ParleyError as exc:
                return message, st, a_value, b_value, f"⚠ {exc}", False, *keep
            mode = "battle" if anonymous else "side-by-side"
            conversations = [(await asyncio.to_thread(services.conversations.create, user.id, m, mode=mode)).id
                             for m in models]
            st = {"models": list(models), "voted": False, "conversations": conversations}
        replies = [(await asyncio.to_thread(services.conversations.begin_reply, user.id, cid, message, model=model)).id
                   for cid, model in zip(st["conversations"], st["models"])]
        st = {**st, "replies": replies, "failed": [], "pending": True}  # no vote until both replies are written
        a_value = [*(a_value or []), {"role": "user", "content": message}]
        b_value = [*(b_value or []), {"role": "user", "content": message}]
        shown = "" if anonymous else f"Model A: **{st['models'][0]}** · Model B: **{st['models'][1]}**"
        return "", st, a_value, b_value, shown, True, *[gr.update(interactive=False)] * len(vote_buttons)

    async def bot_turn(st, a_value, b_value, temp, top, limit, go, request: gr.Request):
        if not go:
            yield gr.skip(), a_value, b_value, *[gr.skip()] * len(vote_buttons)
            return
        user = await asyncio.to_thread(services.user, request)
        params = ReplyParams(temperature=temp, top_p=top, max_tokens=int(limit))
        values = [[*a_value, {"role": "assistant", "content": ""}], [*b_value, {"role": "assistant", "content": ""}]]
        replies = [StreamedReply(services, user.id, st["replies"][side], st["models"][side], params) for side in (0, 1)]
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(side: int) -> None:
            stored = await asyncio.to_thread(services.conversations.get, user.id, st["conversations"][side])
            try:
                async with contextlib.aclosing(replies[side].stream(stored.openai_messages(before=st["replies"][side]))) as texts:
                    async for text in texts:
                        await queue.put((side, text))
            finally:
                await queue.put((side, None))

        tasks = [asyncio.create_task(pump(0)), asyncio.create_task(pump(1))]
        try:
            open_sides = 2
            while open_sides:
                side, text = await queue.get()
                if text is None:
                    open_sides -= 1
                    values[side][-1] = {"role": "assistant", "content": replies[side].shown()}
                else:
                    values[side][-1] = {"role": "assistant", "content": text}
                yield gr.skip(), values[0], values[1], *[gr.skip()] * len(vote_buttons)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(reply.save_final() for reply in replies))
        failed = [side for side in (0, 1) if replies[side].error]
        st = {**st, "failed": failed, "pending": False}
        yield st, values[0], values[1], *vote_updates(failed)

    def vote_updates(failed: list[int]) -> list:
        """The vote buttons after a turn: active, or inactive and saying why."""
        if not failed:
            return [gr.update(interactive=True, value=label) for label, _ in VOTES]
        which = " and ".join(f"model {'AB'[side]}" for side in failed)
        why = f"{which} failed to answer"
        return [gr.update(interactive=False, value=f"{label} (no vote: {why})") for label, _ in VOTES]

    if anonymous:
        async def turn_fn(message, st, a_value, b_value, request: gr.Request):
            return await user_turn(message, st, a_value, b_value, (), request)
    else:
        async def turn_fn(message, st, a_value, b_value, model_a, model_b, request: gr.Request):
            return await user_turn(message, st, a_value, b_value, (model_a, model_b), request)

    turn = [text, state, chat_a, chat_b, *picks]
    events = [trigger(turn_fn, turn, [text, state, chat_a, chat_b, names, pending, *vote_buttons]).then(
        bot_turn, [state, chat_a, chat_b, temperature, top_p, max_tokens, pending],
        [state, chat_a, chat_b, *vote_buttons], concurrency_limit=None)
        for trigger in (send.click, text.submit)]

    def after_stop(st):
        """Stopped replies are kept (marked stopped) and may be voted on, unless a side had failed."""
        if not st.get("pending"):
            return gr.skip(), *[gr.skip()] * len(vote_buttons)
        return {**st, "pending": False}, *vote_updates(st.get("failed", []))

    stop.click(None, None, None, cancels=events).then(after_stop, [state], [state, *vote_buttons])

    def vote(kind: str):
        def handler(st, request: gr.Request):
            if not st.get("models") or st.get("voted"):
                return st, gr.skip(), "Nothing to vote on.", *[gr.skip()] * len(vote_buttons)
            if st.get("pending"):
                return st, gr.skip(), "Wait until both replies are written.", *[gr.skip()] * len(vote_buttons)
            if st.get("failed"):
                return (st, gr.skip(), "A model failed to answer this turn, so this round cannot be voted on; send "
                        "another message or start a new round.", *vote_updates(st["failed"]))
            user = services.user(request)
            services.votes.record(user.id, kind, st["models"][0], st["models"][1], anonymous, *st["conversations"])
            st = {**st, "voted": True}
            label = dict((k, lbl) for lbl, k in VOTES)[kind]
            revealed = f"Model A: **{st['models'][0]}** · Model B: **{st['models'][1]}**"
            return (st, revealed, f"Your vote: {label}. Thank you! Start a new round to go on.",
                    *[gr.update(interactive=False)] * len(vote_buttons))
        return handler

    for button, (_, kind) in zip(vote_buttons, VOTES):
        button.click(vote(kind), [state], [state, names, notice, *vote_buttons])

    def reset():
        return {}, [], [], "", "", *[gr.update(interactive=False, value=label) for label, _ in VOTES]

    new_round.click(reset, None, [state, chat_a, chat_b, names, notice, *vote_buttons], cancels=events)
    return {"picks": picks}
