#!/usr/bin/env python3
"""Writes fixtures/chat-export/: a small synthetic Discord-style export (DiscordChatExporter's JSON
shape) and consent files, for the persona tests. Deterministic: running it again gives the same bytes.

The server "Forge Club" has three channels and these people:
  1001 Alice   - tea and gardening, always cheerful; persona
  1002 Bob     - bikes and repairs, renamed from "Bobby" to "Robert" halfway; persona
  1003 Carol   - every message carries a CAROL-SECRET marker; excluded in consent.json
  1004 Dave    - anonymised in consent.json; his name also appears in others' messages
  1005 Erin    - a handful of messages, below the persona threshold
  2000 ForgeBot - a bot, dropped
plus system messages, an attachment-only message, an empty one, replies (some to Carol), mentions and URLs.
"""
import json
import os
import random

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "chat-export")
rng = random.Random(7)

USERS = {
    "1001": [("alice", "Alice")],
    "1002": [("bobby_b", "Bobby"), ("bobby_b", "Robert")],
    "1003": [("carol", "Carol")],
    "1004": [("dave", "Dave")],
    "1005": [("erin", "Erin")],
}

ALICE = [
    "I just brewed a pot of jasmine tea, lovely!",
    "The tomatoes in my garden are finally red!",
    "Green tea in the morning is the best start!",
    "My basil plants are growing so fast!",
    "Has anyone tried oolong tea with honey? So good!",
    "I planted lavender by the fence today!",
    "Tea and a good book, perfect evening!",
    "The roses need more water this week!",
]
BOB = [
    "I fixed the chain on my bike again.",
    "New brake pads make all the difference.",
    "Rode forty kilometres along the river today.",
    "You need a proper torque wrench for that bolt.",
    "My gears keep slipping, time to adjust the derailleur.",
    "Tyre pressure matters more than people think.",
    "I replaced the bottom bracket, it was worn out.",
    "Cleaning the drivetrain every week saves money.",
]
CAROL = ["I think we should meet on Friday.", "My phone number changed.", "I live near the old mill."]
DAVE = ["I can bring snacks.", "Count me in.", "Sounds good to me."]
ERIN = ["hello everyone", "what a week", "see you all"]


def author(uid, when):
    if uid == "2000":
        return {"id": "2000", "name": "ForgeBot", "discriminator": "0000", "nickname": "ForgeBot",
                "color": None, "isBot": True, "roles": [], "avatarUrl": ""}
    names = USERS[uid]
    name, nick = names[0] if when < RENAMED_AT or len(names) == 1 else names[1]
    return {"id": uid, "name": name, "discriminator": "0000", "nickname": nick, "color": None,
            "isBot": False, "roles": [], "avatarUrl": ""}


class Channel:
    def __init__(self, cid, name):
        self.cid, self.name, self.messages = cid, name, []

    def add(self, mid, uid, minute, content, kind="Default", reply_to=None, attachments=(), mentions=()):
        day, rest = divmod(minute, 24 * 60)
        hh, mm = divmod(rest, 60)
        m = {
            "id": str(mid),
            "type": kind,
            "timestamp": f"2024-03-{day + 1:02d}T{hh:02d}:{mm:02d}:00.000+00:00",
            "timestampEdited": None,
            "callEndedTimestamp": None,
            "isPinned": False,
            "content": content,
            "author": author(uid, minute),
            "attachments": list(attachments),
            "embeds": [],
            "stickers": [],
            "reactions": [],
            "mentions": [author(u, minute) for u in mentions],
        }
        if reply_to is not None:
            m["reference"] = {"messageId": str(reply_to), "channelId": self.cid, "guildId": "77"}
        self.messages.append(m)
        return mid

    def dump(self):
        return {
            "guild": {"id": "77", "name": "Forge Club", "iconUrl": ""},
            "channel": {"id": self.cid, "type": "GuildTextChat", "categoryId": "5", "category": "Text",
                        "name": self.name, "topic": None},
            "dateRange": {"after": None, "before": None},
            "exportedAt": "2024-04-01T00:00:00.000+00:00",
            "messages": self.messages,
            "messageCount": len(self.messages),
        }


# Bob changes his display name from this minute on.
RENAMED_AT = 1000
mid = 10_000


def next_id():
    global mid
    mid += 1
    return mid


def main():
    channels = [Channel("900", "general"), Channel("901", "garden"), Channel("902", "workshop")]
    secrets = 0
    for ci, ch in enumerate(channels):
        minute = ci * 7
        for session in range(8):
            # Sessions are hours apart: each becomes its own thread.
            minute += 180 + rng.randrange(60)
            last_alice = None
            for turn in range(10):
                minute += 1 + rng.randrange(4)
                roll = rng.random()
                if turn % 2 == 0:
                    last_alice = ch.add(next_id(), "1001", minute, rng.choice(ALICE))
                    if rng.random() < 0.3:
                        # A second message straight after: joined into one turn.
                        minute += 1
                        ch.add(next_id(), "1001", minute, "Anyway, more tea for me!")
                elif roll < 0.25 and last_alice is not None:
                    ch.add(next_id(), "1002", minute, rng.choice(BOB), kind="Reply", reply_to=last_alice)
                else:
                    ch.add(next_id(), "1002", minute, rng.choice(BOB))
            # Carol speaks, someone replies to her (dropped with her), Dave and Erin chime in.
            minute += 2
            secrets += 1
            carol = ch.add(next_id(), "1003", minute, f"{rng.choice(CAROL)} CAROL-SECRET-{secrets}")
            minute += 1
            ch.add(next_id(), "1001", minute, "Oh really, Carol? Tell me more!", kind="Reply", reply_to=carol)
            minute += 1
            ch.add(next_id(), "1004", minute, f"{rng.choice(DAVE)} Dave here.")
            minute += 1
            ch.add(next_id(), "1002", minute, "Thanks Dave, see you there <@1004>.", mentions=["1004"])
            if session % 3 == 0:
                minute += 1
                ch.add(next_id(), "1005", minute, rng.choice(ERIN))
                minute += 1
                ch.add(next_id(), "1001", minute, "Hi Erin, check https://example.org/tea?x=1 for recipes!")
            minute += 1
            ch.add(next_id(), "2000", minute, "Reminder: be kind to each other.")
            minute += 1
            ch.add(next_id(), "1002", minute, "", attachments=[{"id": "1", "url": "https://cdn/x.png",
                                                             "fileName": "x.png", "fileSizeBytes": 10}])
            minute += 1
            ch.add(next_id(), "1005", minute, "   ")
            minute += 1
            ch.add(next_id(), "1005", minute, "", kind="GuildMemberJoin")
            minute += 1
            ch.add(next_id(), "1001", minute, "", kind="ChannelPinnedMessage")
            minute += 1
            ch.add(next_id(), "1002", minute, "Agreed, <@1001>! And Carol said the same.", mentions=["1001", "1003"])
    os.makedirs(os.path.join(OUT, "export"), exist_ok=True)
    for ch in channels:
        path = os.path.join(OUT, "export", f"Forge Club - Text - {ch.name} [{ch.cid}].json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(ch.dump(), f, indent=2, ensure_ascii=False)
            f.write("\n")
    with open(os.path.join(OUT, "consent.json"), "w") as f:
        json.dump({"default": "allow", "users": {"1003": "exclude", "1004": "anonymize"}}, f, indent=2)
        f.write("\n")
    with open(os.path.join(OUT, "consent-opt-in.toml"), "w") as f:
        f.write('# Only the people who said yes are kept; everyone else is excluded.\n'
                'default = "exclude"\n\n[users]\n"1001" = "allow"\n"1002" = "allow"\n')


if __name__ == "__main__":
    main()
