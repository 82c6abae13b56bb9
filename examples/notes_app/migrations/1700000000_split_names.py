"""Split each user's name into first and last name."""

import json


def up(ctx):
    for key, value in ctx.scan(prefix=b"user:"):
        user = json.loads(value)
        first, _, last = user.pop("name").partition(" ")
        user.update(first=first, last=last)
        ctx.put(key, json.dumps(user, sort_keys=True).encode())


def down(ctx):
    for key, value in ctx.scan(prefix=b"user:"):
        user = json.loads(value)
        user["name"] = f"{user.pop('first')} {user.pop('last')}".strip()
        ctx.put(key, json.dumps(user, sort_keys=True).encode())


def validate(ctx):
    return [key for key, value in ctx.scan(prefix=b"user:") if b'"first"' not in value][:5]
