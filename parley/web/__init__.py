"""The web UI: direct chat, Chatbot Arena (battle and side-by-side), leaderboard, history (Gradio)."""
