"""Telegram's side of the bot: the Bot API client (``bot_api``), reading updates with
python-telegram-bot's types (``parsing``), and the texts the bot sends (``text``)."""
