"""Direct chat: model, parameters, streamed replies, feedback, and the user's history in a sidebar."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from pathlib import Path

import gradio as gr

from parley.errors import ParleyError
from parley.store.conversations import INCOMPLETE
from parley.web.model_client import ReplyParams
from parley.web.replies import StreamedReply, chat_messages
from parley.web.services import WebServices
from parley.web.user_input import check_input


def _label(c) -> str:
    return f"{c.title} · {c.model or '-'} · {c.updated_at:%Y-%m-%d %H:%M}"


def history_choices(services: WebServices, request, search: str | None = None) -> list[tuple[str, str]]:
    user = services.user(request)
    return [(_label(c), c.id) for c in services.conversations.list(user.id, search=search)]


def build(services: WebServices, models_box_choices) -> dict:
    """The Chat tab; returns the components that the app's load event fills in."""
    conv_id = gr.State(None)
    last_reply = gr.State(None)  # the id of the last stored assistant message (for feedback)
    pending = gr.State(None)  # the id of the stored reply being written
    with gr.Row():
        with gr.Column(scale=1, min_width=260):
            new_chat = gr.Button("+ New chat", elem_id="new-chat")
            search = gr.Textbox(placeholder="Search your conversations", show_label=False, elem_id="history-search")
            history = gr.Radio(choices=[], label="History", elem_id="history")
            with gr.Accordion("This conversation", open=False, elem_id="conversation-actions"):
                title = gr.Textbox(label="Title", elem_id="conversation-title")
                with gr.Row():
                    rename = gr.Button("Rename", size="sm", elem_id="rename")
                    delete = gr.Button("Delete", size="sm", variant="stop", elem_id="delete")
                with gr.Row():
                    export_json = gr.Button("Export JSON", size="sm", elem_id="export-json")
                    export_md = gr.Button("Export markdown", size="sm", elem_id="export-md")
                export_file = gr.File(label="Download", interactive=False, visible=False, elem_id="export-file")
        with gr.Column(scale=4):
            model = gr.Dropdown(choices=models_box_choices, label="Model", elem_id="chat-model", allow_custom_value=False)
            model_about = gr.Markdown(elem_id="model-about")
            chatbot = gr.Chatbot(label="Conversation", height=480, elem_id="chatbot", render_markdown=True)
            with gr.Row():
                text = gr.Textbox(placeholder="Send a message (Enter)", show_label=False, scale=8, elem_id="chat-input",
                                  max_lines=12)
                send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
            with gr.Row():
                stop = gr.Button("Stop", size="sm", elem_id="chat-stop")
                regenerate = gr.Button("Regenerate", size="sm", elem_id="chat-regenerate")
                clear = gr.Button("Clear", size="sm", elem_id="chat-clear")
                upvote = gr.Button("Upvote", size="sm", elem_id="chat-upvote")
                downvote = gr.Button("Downvote", size="sm", elem_id="chat-downvote")
                flag = gr.Button("Flag", size="sm", elem_id="chat-flag")
            notice = gr.Markdown(elem_id="chat-notice")
            with gr.Accordion("Parameters", open=False, elem_id="chat-parameters"):
                system_prompt = gr.Textbox(label="System prompt", lines=2, elem_id="system-prompt")
                temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature", elem_id="temperature")
                top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top P", elem_id="top-p")
                max_tokens = gr.Slider(16, 4096, value=512, step=16, label="Max output tokens", elem_id="max-tokens")

    def user_turn(message, history_value, conversation, model_name, system, request: gr.Request):
        user = services.user(request)
        turns = sum(1 for m in history_value or [] if m["role"] == "user")
        problem = check_input(message or "", turns, services.settings.limits, services.moderator)
        if problem is None and not model_name:
            problem = "Pick a model first."
        if problem:
            return message, history_value, conversation, f"⚠ {problem}", None, gr.skip()
        if conversation is None:
            conversation = services.conversations.create(user.id, model_name, system_prompt=system or None).id
        reply = services.conversations.begin_reply(user.id, conversation, message, model=model_name)
        history_value = [*(history_value or []), {"role": "user", "content": message}]
        return "", history_value, conversation, "", reply.id, gr.update(choices=history_choices(services, request),
                                                                        value=conversation)

    async def bot_turn(history_value, conversation, model_name, temp, top, limit, reply_id, request: gr.Request):
        if reply_id is None:
            yield history_value, gr.skip(), gr.skip()
            return
        user = await asyncio.to_thread(services.user, request)
        stored = await asyncio.to_thread(services.conversations.get, user.id, conversation)
        params = ReplyParams(temperature=temp, top_p=top, max_tokens=int(limit))
        history_value = [*history_value, {"role": "assistant", "content": ""}]
        reply = StreamedReply(services, user.id, reply_id, model_name, params)
        try:
            async with contextlib.aclosing(reply.stream(stored.openai_messages(before=reply_id))) as texts:
                async for text in texts:
                    history_value[-1] = {"role": "assistant", "content": text}
                    yield history_value, gr.skip(), ""
        finally:
            await reply.save_final()
        history_value[-1] = {"role": "assistant", "content": reply.shown()}
        yield history_value, reply_id, f"⚠ {reply.error}" if reply.error else ""

    turn_inputs = [text, chatbot, conv_id, model, system_prompt]
    turn_outputs = [text, chatbot, conv_id, notice, pending, history]
    bot_inputs = [chatbot, conv_id, model, temperature, top_p, max_tokens, pending]
    bot_outputs = [chatbot, last_reply, notice]
    events = []
    for trigger in (send.click, text.submit):
        events.append(trigger(user_turn, turn_inputs, turn_outputs).then(bot_turn, bot_inputs, bot_outputs,
                                                                          concurrency_limit=None))

    def redo_reply(history_value, conversation, model_name, request: gr.Request):
        if conversation is None or not history_value:
            return history_value, None, "Nothing to regenerate."
        reply = services.conversations.begin_reply(services.user(request).id, conversation, None, model=model_name)
        if history_value[-1]["role"] == "assistant":
            history_value = history_value[:-1]
        return history_value, reply.id, ""

    regen = regenerate.click(redo_reply, [chatbot, conv_id, model], [chatbot, pending, notice]).then(
        bot_turn, bot_inputs, bot_outputs, concurrency_limit=None)

    async def show_stopped(conversation, reply_id, request: gr.Request):
        """After Stop: the conversation as stored, once the stopped reply has been saved."""
        if conversation is None:
            return gr.skip(), gr.skip()
        user = await asyncio.to_thread(services.user, request)
        for _ in range(40):
            c = await asyncio.to_thread(services.conversations.get, user.id, conversation)
            if all(m.finish_reason != INCOMPLETE for m in c.messages if m.id == reply_id):
                break
            await asyncio.sleep(0.05)
        return chat_messages(c), reply_id

    stop.click(None, None, None, cancels=[*events, regen]).then(show_stopped, [conv_id, pending], [chatbot, last_reply])

    def start_new():
        return None, [], None, "", "", gr.update(value=None)

    # Gradio's own trash icon in the chatbot clears the screen: it starts a new chat too, so that what is
    # shown is always the conversation the next message continues (the old one stays in the history).
    # Leaving a conversation while its reply streams stops that reply (stored as stopped), so that it cannot
    # write over the screen of the next one.
    writing = [*events, regen]
    for clear_event in (clear.click, new_chat.click, chatbot.clear):
        clear_event(start_new, None, [conv_id, chatbot, last_reply, notice, title, history], cancels=writing)

    def give_feedback(kind):
        def handler(message_id, request: gr.Request):
            if message_id is None:
                return "There is no reply to rate yet."
            services.votes.feedback(services.user(request).id, message_id, kind)
            return {"upvote": "Thanks for the upvote.", "downvote": "Thanks for the feedback: noted as a downvote.",
                    "flag": "Flagged for review."}[kind]
        return handler

    for button, kind in ((upvote, "upvote"), (downvote, "downvote"), (flag, "flag")):
        button.click(give_feedback(kind), [last_reply], [notice])

    def open_conversation(conversation, request: gr.Request):
        if not conversation:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        user = services.user(request)
        try:
            c = services.conversations.get(user.id, conversation)
        except ParleyError as exc:
            return None, [], None, f"⚠ {exc}", "", gr.skip(), gr.skip()
        replies = [m.id for m in c.messages if m.role == "assistant"]
        return (c.id, chat_messages(c), replies[-1] if replies else None, "", c.title, gr.update(value=c.model),
                c.system_prompt or "")

    history.input(open_conversation, [history], [conv_id, chatbot, last_reply, notice, title, model, system_prompt],
                  cancels=writing)
    def do_search(query, request: gr.Request):
        return gr.update(choices=history_choices(services, request, query))

    search.change(do_search, [search], [history])

    def do_rename(conversation, new_title, request: gr.Request):
        if conversation is None:
            return "Open a conversation first.", gr.skip()
        try:
            services.conversations.rename(services.user(request).id, conversation, new_title)
        except ParleyError as exc:
            return f"⚠ {exc}", gr.skip()
        return "Renamed.", gr.update(choices=history_choices(services, request), value=conversation)

    rename.click(do_rename, [conv_id, title], [notice, history])

    def do_delete(conversation, request: gr.Request):
        if conversation is None:
            return gr.skip(), gr.skip(), "Open a conversation first.", gr.skip()
        services.conversations.delete(services.user(request).id, conversation)
        return None, [], "Deleted.", gr.update(choices=history_choices(services, request), value=None)

    delete.click(do_delete, [conv_id], [conv_id, chatbot, notice, history])

    def do_export(kind):
        def handler(conversation, request: gr.Request):
            if conversation is None:
                return gr.update(visible=False), "Open a conversation first."
            user = services.user(request)
            text_out = (services.conversations.export_json if kind == "json" else services.conversations.export_markdown)(
                user.id, conversation)
            path = Path(tempfile.mkdtemp(prefix="parley-export-")) / f"conversation-{conversation[:8]}.{kind}"
            path.write_text(text_out, encoding="utf-8")
            return gr.update(value=str(path), visible=True), ""
        return handler

    export_json.click(do_export("json"), [conv_id], [export_file, notice])
    export_md.click(do_export("md"), [conv_id], [export_file, notice])
    model.change(services.model_info.describe, [model], [model_about])
    return {"model": model, "history": history, "model_about": model_about}
