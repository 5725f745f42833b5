"""The official Slack SDK for Python (`slack_sdk`) pointed at Switchboard: Web API methods and
RTM events, unchanged client code."""

import queue
import threading
import time
import uuid

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.rtm_v2 import RTMClient


def web(dev, user):
    return WebClient(token=dev["tokens"]["users"][user]["token"], base_url=dev["urls"]["api"] + "/")


def first_heard(heard, post, what):
    """What an app first hears in `heard`, posting with `post(attempt)` until it does
    (bounded): an app's session goes live in the background."""
    for attempt in range(20):
        post(attempt)
        try:
            return heard.get(timeout=1)
        except queue.Empty:
            pass
    raise AssertionError(f"the app never heard {what}")


def thread_of(client, channel, ts, n):
    """The thread of `ts` as `client` reads it, once it has `n` messages (at most 10 s)."""
    deadline, replies = time.time() + 10, []
    while time.time() < deadline:
        replies = client.conversations_replies(channel=channel, ts=ts)["messages"]
        if len(replies) == n:
            break
        time.sleep(0.1)
    return replies


def rtm_client(dev, user, kinds):
    """An RTM client of `user` (not yet connected) that queues the events of `kinds`, and the
    event set by its `hello`."""
    events: "queue.Queue[dict]" = queue.Queue()
    hello = threading.Event()
    rtm = RTMClient(token=dev["tokens"]["users"][user]["token"], base_url=dev["urls"]["api"] + "/",
                    auto_reconnect_enabled=False)
    rtm.on("hello")(lambda client, event: hello.set())
    for kind in kinds:
        rtm.on(kind)(lambda client, event: events.put(event))
    return rtm, events, hello


def test_auth_and_rtm_connect(dev):
    alice = web(dev, "alice")
    me = alice.auth_test()
    assert me["ok"] and me["user_id"] == dev["tokens"]["users"]["alice"]["id"]
    rtm = alice.rtm_connect()
    assert rtm["url"].startswith("ws://127.0.0.1")


def test_post_edit_delete_react_thread_history(dev):
    alice, bob = web(dev, "alice"), web(dev, "bob")
    name = "py-" + uuid.uuid4().hex[:8]
    channel = alice.conversations_create(name=name)["channel"]["id"]
    bob.conversations_join(channel=channel)

    posted = alice.chat_postMessage(channel=channel, text="hello from slack_sdk", client_msg_id="py-1")
    ts = posted["ts"]
    again = alice.chat_postMessage(channel=channel, text="hello from slack_sdk", client_msg_id="py-1")
    assert again["ts"] == ts, "client_msg_id makes the post idempotent"

    updated = alice.chat_update(channel=channel, ts=ts, text="hello, edited")
    assert updated["text"] == "hello, edited"
    bob.reactions_add(channel=channel, timestamp=ts, name="thumbsup")
    reply = bob.chat_postMessage(channel=channel, text="a reply", thread_ts=ts)
    doomed = bob.chat_postMessage(channel=channel, text="delete me")
    bob.chat_delete(channel=channel, ts=doomed["ts"])

    history = alice.conversations_history(channel=channel, limit=10)
    texts = [m["text"] for m in history["messages"]]
    assert texts == ["hello, edited"], texts
    top = history["messages"][0]
    assert top["reply_count"] == 1
    assert top["reactions"][0]["name"] == "thumbsup"
    replies = alice.conversations_replies(channel=channel, ts=ts)
    assert [m["text"] for m in replies["messages"]] == ["hello, edited", "a reply"]
    assert reply["message"]["thread_ts"] == ts
    got = alice.reactions_get(channel=channel, timestamp=ts)
    assert got["message"]["reactions"][0]["users"] == [dev["tokens"]["users"]["bob"]["id"]]
    reacted = bob.reactions_list(limit=1)["items"]
    assert [(i["channel"], i["message"]["ts"]) for i in reacted] == [(channel, ts)], reacted

    # Pins.
    bob.pins_add(channel=channel, timestamp=ts)
    with pytest.raises(SlackApiError) as err:
        alice.pins_add(channel=channel, timestamp=ts)
    assert err.value.response["error"] == "already_pinned"
    pins = alice.pins_list(channel=channel)["items"]
    assert [(p["message"]["ts"], p["created_by"]) for p in pins] == [(ts, dev["tokens"]["users"]["bob"]["id"])]
    pinned = [m for m in alice.conversations_history(channel=channel, limit=5)["messages"] if m["ts"] == ts]
    assert pinned[0]["pinned_to"] == [channel], pinned
    alice.pins_remove(channel=channel, timestamp=ts)
    assert alice.pins_list(channel=channel)["items"] == []

    # A reply also sent to the channel (Slack's "Also send to #channel").
    shown = alice.chat_postMessage(channel=channel, text="done, see thread", thread_ts=ts, reply_broadcast=True)
    assert shown["message"]["subtype"] == "thread_broadcast"
    # Its thread's start, which clients show above it.
    root = shown["message"]["root"]
    assert (root["ts"], root["text"], root["user"]) == (ts, "hello, edited", dev["tokens"]["users"]["alice"]["id"]), root
    top = alice.conversations_history(channel=channel, limit=10)["messages"]
    assert [(m["text"], m.get("subtype")) for m in top] == [
        ("done, see thread", "thread_broadcast"),
        ("hello, edited", None),
    ]
    assert top[1]["reply_count"] == 2

    with pytest.raises(SlackApiError) as err:
        bob.chat_update(channel=channel, ts=ts, text="not mine")
    assert err.value.response["error"] == "cant_update_message"
    with pytest.raises(SlackApiError) as err:
        alice.chat_postMessage(channel="C0NOSUCHONE", text="x")
    assert err.value.response["error"] == "channel_not_found"


def test_me_message(dev):
    """`chat_meMessage`: a /me message, subtype `me_message`."""
    alice = web(dev, "alice")
    channel = alice.conversations_create(name="py-me-" + uuid.uuid4().hex[:6])["channel"]["id"]
    me = alice.chat_meMessage(channel=channel, text="ships it")
    mine = alice.conversations_history(channel=channel, limit=1)["messages"][0]
    assert mine["ts"] == me["ts"] and mine["subtype"] == "me_message" and mine["text"] == "ships it", mine


def test_scheduled_messages(dev):
    """`chat_scheduleMessage`, `chat_scheduledMessages_list`, `chat_deleteScheduledMessage`:
    a message scheduled two seconds ahead is posted then; one an hour ahead is deleted."""
    alice = web(dev, "alice")
    channel = alice.conversations_create(name="py-later-" + uuid.uuid4().hex[:6])["channel"]["id"]
    soon = alice.chat_scheduleMessage(channel=channel, text="tea is ready", post_at=int(time.time()) + 2)
    later = alice.chat_scheduleMessage(channel=channel, text="retro", post_at=int(time.time()) + 3600)
    assert soon["message"]["type"] == "delayed_message" and soon["scheduled_message_id"].startswith("Q"), soon
    listed = alice.chat_scheduledMessages_list(channel=channel)["scheduled_messages"]
    assert [m["id"] for m in listed] == [soon["scheduled_message_id"], later["scheduled_message_id"]], listed
    alice.chat_deleteScheduledMessage(channel=channel, scheduled_message_id=later["scheduled_message_id"])
    with pytest.raises(SlackApiError) as err:
        alice.chat_scheduleMessage(channel=channel, text="too late", post_at=int(time.time()) - 5)
    assert err.value.response["error"] == "time_in_past"
    deadline = time.time() + 20
    while time.time() < deadline:
        texts = [m["text"] for m in alice.conversations_history(channel=channel)["messages"]]
        if "tea is ready" in texts:
            break
        time.sleep(0.2)
    assert texts == ["tea is ready"], texts
    assert alice.chat_scheduledMessages_list(channel=channel)["scheduled_messages"] == []


def test_files_upload_v2(dev):
    """`files_upload_v2` (getUploadURLExternal, the upload URL, completeUploadExternal), then
    the file in history, `files_info`, `files_list`, the bytes from `url_private`, and
    `files_delete`."""
    import urllib.request

    alice, bob = web(dev, "alice"), web(dev, "bob")
    channel = alice.conversations_create(name="py-files-" + uuid.uuid4().hex[:6])["channel"]["id"]
    bob.conversations_join(channel=channel)
    content = "id,name\n1,ann\n" * 200
    up = alice.files_upload_v2(channel=channel, content=content, filename="people.csv", title="People",
                               initial_comment="the list")
    file = up["file"]
    assert (file["name"], file["title"], file["size"]) == ("people.csv", "People", len(content)), file
    top = bob.conversations_history(channel=channel, limit=1)["messages"][0]
    assert top["text"] == "the list" and top["files"][0]["id"] == file["id"], top
    assert bob.files_info(file=file["id"])["file"]["mimetype"] == "text/csv"
    assert file["id"] in [f["id"] for f in bob.files_list(channel=channel)["files"]]
    # Found by search_files (by its title) and search_all, once the index has it.
    found = []
    deadline = time.time() + 20
    while time.time() < deadline and not found:
        found = [f["id"] for f in bob.search_files(query="people in:#" + bob.conversations_info(channel=channel)["channel"]["name"])["files"]["matches"]]
        time.sleep(0.2)
    assert found == [file["id"]], found
    assert [f["id"] for f in bob.search_all(query="people")["files"]["matches"]].count(file["id"]) == 1
    req = urllib.request.Request(file["url_private"],
                                 headers={"Authorization": "Bearer " + dev["tokens"]["users"]["bob"]["token"]})
    assert urllib.request.urlopen(req).read().decode() == content
    with pytest.raises(SlackApiError) as err:
        bob.files_delete(file=file["id"])
    assert err.value.response["error"] == "cant_delete_file"
    alice.files_delete(file=file["id"])
    with pytest.raises(SlackApiError) as err:
        alice.files_info(file=file["id"])
    assert err.value.response["error"] == "file_not_found"
    # The sharing message now shows Slack's tombstone in the file's place.
    top = bob.conversations_history(channel=channel, limit=1)["messages"][0]
    assert top["files"] == [{"id": file["id"], "mode": "tombstone"}], top


def test_topic_and_purpose_are_set_and_announced(dev):
    alice = web(dev, "alice")
    channel = alice.conversations_create(name="py-topic-" + uuid.uuid4().hex[:6])["channel"]["id"]
    assert alice.conversations_setTopic(channel=channel, topic="launch")["channel"]["topic"]["value"] == "launch"
    alice.conversations_setPurpose(channel=channel, purpose="ship it")
    info = alice.conversations_info(channel=channel)["channel"]
    assert (info["topic"]["value"], info["purpose"]["value"]) == ("launch", "ship it")
    top = alice.conversations_history(channel=channel, limit=10)["messages"]
    assert [(m.get("subtype"), m["text"], m.get("topic", m.get("purpose"))) for m in top] == [
        ("channel_purpose", "set the channel purpose: ship it", "ship it"),
        ("channel_topic", "set the channel topic: launch", "launch"),
    ]


def test_history_pagination_with_cursor(dev):
    alice = web(dev, "alice")
    channel = alice.conversations_create(name="py-page-" + uuid.uuid4().hex[:6])["channel"]["id"]
    for i in range(7):
        alice.chat_postMessage(channel=channel, text=f"page {i}")
    seen, cursor = [], None
    while True:
        page = alice.conversations_history(channel=channel, limit=3, cursor=cursor)
        seen += [m["text"] for m in page["messages"]]
        cursor = page.get("response_metadata", {}).get("next_cursor")
        if not page["has_more"]:
            break
    assert seen == [f"page {i}" for i in reversed(range(7))]


def test_conversations_close_and_open(dev):
    alice, bob = web(dev, "alice"), web(dev, "bob")
    bob_id = dev["tokens"]["users"]["bob"]["id"]
    dm = alice.conversations_open(users=bob_id)["channel"]["id"]
    assert alice.conversations_info(channel=dm)["channel"]["is_open"] is True
    assert alice.conversations_close(channel=dm)["ok"] is True
    assert alice.conversations_info(channel=dm)["channel"]["is_open"] is False
    assert alice.conversations_close(channel=dm)["already_closed"] is True
    bob.chat_postMessage(channel=dm, text="ping")
    assert alice.conversations_info(channel=dm)["channel"]["is_open"] is True
    with pytest.raises(SlackApiError) as e:
        alice.conversations_close(channel=dev["tokens"]["general"])
    assert e.value.response["error"] == "method_not_supported_for_channel_type"


def test_search_messages(dev):
    alice = web(dev, "alice")
    channel = alice.conversations_create(name="py-search-" + uuid.uuid4().hex[:6])["channel"]["id"]
    word = "zebra" + uuid.uuid4().hex[:6]
    alice.chat_postMessage(channel=channel, text=f"the {word} crossed")
    deadline = time.time() + 10
    while time.time() < deadline:
        found = alice.search_messages(query=f"{word} from:@alice", count=5)
        if found["messages"]["total"] == 1:
            break
        time.sleep(0.1)
    assert found["messages"]["total"] == 1
    assert found["messages"]["matches"][0]["channel"]["id"] == channel
    # The SDK's own iteration follows `response_metadata.next_cursor` page by page.
    for n in range(4):
        alice.chat_postMessage(channel=channel, text=f"{word} again {n}")
    deadline = time.time() + 10
    while time.time() < deadline:
        if alice.search_messages(query=word)["messages"]["total"] == 5:
            break
        time.sleep(0.1)
    pages = [
        [m["text"] for m in page["messages"]["matches"]]
        for page in alice.search_messages(query=word, sort="timestamp", sort_dir="asc", count=2, cursor="*")
    ]
    assert [len(p) for p in pages] == [2, 2, 1], pages
    assert sum(pages, []) == [f"the {word} crossed"] + [f"{word} again {n}" for n in range(4)]


def test_rtm_client_receives_messages_and_changes(dev):
    alice = web(dev, "alice")
    general = dev["tokens"]["general"]
    rtm, events, hello = rtm_client(dev, "bob", ["message", "reaction_added"])
    rtm.connect()
    try:
        assert hello.wait(10), "no hello over RTM"
        # The gateway subscribes the session's channels right after hello; post until one arrives.
        marker = "rtm-" + uuid.uuid4().hex[:8]
        got = None
        deadline = time.time() + 10
        while got is None and time.time() < deadline:
            posted = alice.chat_postMessage(channel=general, text=marker)
            try:
                while True:
                    e = events.get(timeout=1)
                    if e.get("text") == marker:
                        got = e
                        break
            except queue.Empty:
                pass
        assert got is not None, "the RTM client never received the message"
        assert got["channel"] == general and got["seq"] >= 1
        alice.chat_update(channel=general, ts=posted["ts"], text=marker + " edited")
        alice.reactions_add(channel=general, timestamp=posted["ts"], name="wave")
        alice.chat_postMessage(channel=general, text=marker + " broadcast", thread_ts=posted["ts"], reply_broadcast=True)
        kinds = set()
        deadline = time.time() + 10
        while len(kinds) < 3 and time.time() < deadline:
            try:
                e = events.get(timeout=1)
            except queue.Empty:
                continue
            if e.get("subtype") == "message_changed" and e["message"]["text"] == marker + " edited":
                kinds.add("changed")
            if e.get("type") == "reaction_added" and e["reaction"] == "wave":
                kinds.add("reaction")
            if e.get("subtype") == "thread_broadcast" and e["thread_ts"] == posted["ts"]:
                assert e["root"]["text"] == marker + " edited" and e["root"]["ts"] == posted["ts"], e
                kinds.add("broadcast")
        assert kinds == {"changed", "reaction", "broadcast"}
    finally:
        rtm.close()


def test_usergroups_and_their_events(dev):
    """`usergroups_*` as an on-call bot uses them: a group is made, its members rotated and
    listed, disabled and enabled; an RTM client of the workspace hears each change."""
    alice = web(dev, "alice")
    ids = dev["tokens"]["users"]
    rtm, events, hello = rtm_client(dev, "bob", ["subteam_created", "subteam_updated", "subteam_members_changed",
                                                 "subteam_self_added", "subteam_self_removed"])
    rtm.connect()
    try:
        assert hello.wait(10), "no hello over RTM"
        handle = "oncall-" + uuid.uuid4().hex[:6]
        group = alice.usergroups_create(name="On call " + handle, handle=handle, include_count=True)["usergroup"]
        assert group["id"].startswith("S") and group["handle"] == handle and group["user_count"] == 0, group
        with pytest.raises(SlackApiError) as err:
            alice.usergroups_create(name="Another", handle=handle)
        assert err.value.response["error"] == "handle_already_exists"
        rotated = alice.usergroups_users_update(usergroup=group["id"], users=[ids["alice"]["id"], ids["bob"]["id"]])
        assert rotated["usergroup"]["users"] == [ids["alice"]["id"], ids["bob"]["id"]], rotated
        alice.usergroups_users_update(usergroup=group["id"], users=ids["carol"]["id"])
        assert alice.usergroups_users_list(usergroup=group["id"])["users"] == [ids["carol"]["id"]]
        listed = alice.usergroups_list(include_users=True)["usergroups"]
        assert [g["users"] for g in listed if g["id"] == group["id"]] == [[ids["carol"]["id"]]], listed
        alice.usergroups_disable(usergroup=group["id"])
        assert group["id"] not in [g["id"] for g in alice.usergroups_list()["usergroups"]]
        alice.usergroups_enable(usergroup=group["id"])
        assert group["id"] in [g["id"] for g in alice.usergroups_list()["usergroups"]]

        seen = []
        deadline = time.time() + 10
        while time.time() < deadline and len([e for e in seen if e["type"] == "subteam_members_changed"]) < 2:
            try:
                seen.append(events.get(timeout=1))
            except queue.Empty:
                continue
        mine = [e for e in seen if group["id"] in (e.get("subteam_id"), e.get("subteam", {}).get("id"))]
        assert mine[0]["type"] == "subteam_created", mine
        changes = [e for e in mine if e["type"] == "subteam_members_changed"]
        assert [c["added_users"] for c in changes] == [[ids["alice"]["id"], ids["bob"]["id"]], [ids["carol"]["id"]]], changes
        assert changes[1]["removed_users"] == [ids["alice"]["id"], ids["bob"]["id"]], changes
        # Bob, added then removed, heard both in his own session.
        deadline = time.time() + 10
        while time.time() < deadline and not any(e["type"] == "subteam_self_removed" for e in seen):
            try:
                seen.append(events.get(timeout=1))
            except queue.Empty:
                continue
        own = [e["type"] for e in seen if e["type"].startswith("subteam_self") and e["subteam_id"] == group["id"]]
        assert own == ["subteam_self_added", "subteam_self_removed"], own
    finally:
        rtm.close()


def test_custom_emoji_and_deactivation(dev):
    """`emoji_list` and `admin_emoji_*` as slack_sdk calls them; an admin deactivates a
    user, whose token is then refused with `account_inactive`, and brings it back."""
    alice = web(dev, "alice")
    admin = WebClient(token=dev["tokens"]["admin"], base_url=dev["urls"]["api"] + "/")
    name = "py-" + uuid.uuid4().hex[:6]
    admin.admin_emoji_add(name=name, url="https://img.example/" + name + ".png")
    admin.admin_emoji_addAlias(name=name + "-too", alias_for=":" + name + ":")
    listed = alice.emoji_list()["emoji"]
    assert listed[name] == "https://img.example/" + name + ".png", listed
    assert listed[name + "-too"] == "alias:" + name, listed
    with pytest.raises(SlackApiError) as err:
        admin.admin_emoji_add(name=name, url="https://img.example/other.png")
    assert err.value.response["error"] == "error_name_taken"
    admin.admin_emoji_remove(name=name)
    assert name + "-too" not in alice.emoji_list()["emoji"]

    made = admin.api_call("admin.users.create", json={"name": "leaver" + uuid.uuid4().hex[:6]})
    leaver = WebClient(token=made["token"], base_url=dev["urls"]["api"] + "/")
    assert leaver.auth_test()["ok"]
    admin.api_call("admin.users.setInactive", json={"user": made["user"]["id"]})
    with pytest.raises(SlackApiError) as err:
        leaver.auth_test()
    assert err.value.response["error"] == "account_inactive"
    assert alice.users_info(user=made["user"]["id"])["user"]["deleted"] is True
    admin.api_call("admin.users.setActive", json={"user": made["user"]["id"]})
    assert leaver.auth_test()["user_id"] == made["user"]["id"]


def test_bookmarks(dev):
    """`bookmarks_add`, `bookmarks_edit`, `bookmarks_list`, `bookmarks_remove` as an incident
    bot uses them."""
    alice = web(dev, "alice")
    channel = alice.conversations_create(name="py-inc-" + uuid.uuid4().hex[:6])["channel"]["id"]
    added = alice.bookmarks_add(channel_id=channel, title="Runbook", type="link",
                                link="https://runbooks.example/db", emoji=":book:")["bookmark"]
    assert added["id"].startswith("Bk") and added["emoji"] == ":book:", added
    alice.bookmarks_edit(channel_id=channel, bookmark_id=added["id"], title="DB runbook")
    listed = alice.bookmarks_list(channel_id=channel)["bookmarks"]
    assert [(b["title"], b["link"]) for b in listed] == [("DB runbook", "https://runbooks.example/db")], listed
    with pytest.raises(SlackApiError) as err:
        alice.bookmarks_add(channel_id=channel, title="Bad", type="link", link="not a link")
    assert err.value.response["error"] == "invalid_link"
    alice.bookmarks_remove(channel_id=channel, bookmark_id=added["id"])
    assert alice.bookmarks_list(channel_id=channel)["bookmarks"] == []


def test_team_info_rtm_start_permalink_and_kick(dev):
    from urllib.parse import urlparse

    alice, bob, carol = web(dev, "alice"), web(dev, "bob"), web(dev, "carol")
    users = dev["tokens"]["users"]
    team = bob.team_info()["team"]
    assert team["id"] == dev["tokens"]["workspace"] and team["domain"] == "demo"
    with pytest.raises(SlackApiError) as err:
        bob.team_info(team="T0NOTOURS")
    assert err.value.response["error"] == "team_not_found"

    start = bob.rtm_start()
    assert start["url"].startswith("ws://127.0.0.1") and start["self"]["id"] == users["bob"]["id"]

    name = "py-kick-" + uuid.uuid4().hex[:6]
    channel = bob.conversations_create(name=name, is_private=True)["channel"]["id"]
    bob.conversations_invite(channel=channel, users=users["carol"]["id"])
    posted = bob.chat_postMessage(channel=channel, text="link me")
    link = carol.chat_getPermalink(channel=channel, message_ts=posted["ts"])
    host = urlparse(dev["urls"]["api"]).netloc
    expected = f"http://{host}/archives/{channel}/p{posted['ts'].replace('.', '')}"
    assert link["channel"] == channel and link["permalink"] == expected, link

    carol.conversations_kick(channel=channel, user=users["bob"]["id"])
    assert carol.conversations_members(channel=channel)["members"] == [users["carol"]["id"]]
    with pytest.raises(SlackApiError) as err:
        bob.conversations_history(channel=channel)
    assert err.value.response["error"] == "channel_not_found"
    public = alice.conversations_create(name=name + "-pub")["channel"]["id"]
    bob.conversations_join(channel=public)
    with pytest.raises(SlackApiError) as err:
        carol.conversations_kick(channel=public, user=users["bob"]["id"])
    assert err.value.response["error"] == "restricted_action"
    alice.conversations_kick(channel=public, user=users["bob"]["id"])
    assert not bob.conversations_info(channel=public)["channel"]["is_member"]


def test_attachments_and_incoming_webhooks(dev):
    """What bots send: attachments with no text (alert managers, CI servers), through
    `chat_postMessage` and through the SDK's own incoming-webhook client."""
    from slack_sdk.webhook import WebhookClient

    alice = web(dev, "alice")
    channel = alice.conversations_create(name="py-hook-" + uuid.uuid4().hex[:6])["channel"]["id"]
    posted = alice.chat_postMessage(
        channel=channel,
        attachments=[{"fallback": "deploy 9 done", "color": "good", "title": "Deploy 9", "text": "all green"}],
    )
    assert posted["message"]["text"] == "Deploy 9\nall green"

    hook = alice.api_call("hooks.create", json={"channel": channel})
    webhook = WebhookClient(hook["url"])
    sent = webhook.send(
        text="Build 12 failed",
        attachments=[{"color": "danger", "fields": [{"title": "branch", "value": "main", "short": True}]}],
    )
    assert (sent.status_code, sent.body) == (200, "ok")
    sent = webhook.send(blocks=[{"type": "header", "text": {"type": "plain_text", "text": "Release 3.1"}}])
    assert (sent.status_code, sent.body) == (200, "ok")
    refused = webhook.send(attachments=[{"color": "good"}])
    assert (refused.status_code, refused.body) == (400, "no_text")

    history = alice.conversations_history(channel=channel)["messages"]
    texts = [m["text"] for m in history]
    assert texts == ["Release 3.1", "Build 12 failed\nbranch: main", "Deploy 9\nall green"], texts
    # What was posted comes back to draw: the blocks and attachments themselves.
    assert history[0]["blocks"] == [{"type": "header", "text": {"type": "plain_text", "text": "Release 3.1"}}]
    assert history[1]["attachments"][0]["fields"][0] == {"title": "branch", "value": "main", "short": True}
    assert history[2]["attachments"][0]["color"] == "good"


def test_bolt_app_over_socket_mode(dev):
    """A Bolt app, unchanged, as a bot user with a bot token (`xoxb-`): it opens Socket Mode
    with `apps.connections.open`, hears a message in its channel, answers with `say` in the
    thread (its answer carries its `bot_id`, so it does not hear itself), and hears a
    reaction. It runs as two instances (two connections, as apps do for redundancy): each
    event reaches one of them, so every message is answered once. A direct message says
    `channel_type` `im`."""
    import re

    from slack_bolt import App
    from slack_bolt.adapter.socket_mode import SocketModeHandler

    alice = web(dev, "alice")
    admin = WebClient(token=dev["tokens"]["admin"], base_url=dev["urls"]["api"] + "/")
    made = admin.api_call("admin.users.create", json={"name": "boltbot" + uuid.uuid4().hex[:6], "is_bot": True})
    bot_token, bot_id = made["token"], made["user"]["id"]
    assert bot_token.startswith("xoxb-") and made["user"]["is_bot"] is True
    # An app is its bot user; the bot token is also its app token.
    bot = WebClient(token=bot_token, base_url=dev["urls"]["api"] + "/")
    assert bot.auth_test()["bot_id"] == bot_id
    # What a client does with a message's bot_id: ask who the bot is.
    assert alice.bots_info(bot=bot_id)["bot"]["name"] == made["user"]["name"]
    channel = alice.conversations_create(name="py-bolt-" + uuid.uuid4().hex[:6])["channel"]["id"]
    bot.conversations_join(channel=channel)
    # A name and icon of its own for one message (Slack's chat:write.customize).
    named = bot.chat_postMessage(channel=channel, text="build passed", username="Build: main", icon_emoji=":rocket:")
    assert named["message"]["username"] == "Build: main" and named["message"]["icons"] == {"emoji": ":rocket:"}, named
    # Metadata for other apps, as slack_sdk sends it (a dict, or its Metadata model).
    from slack_sdk.models.metadata import Metadata

    meta = Metadata(event_type="build_finished", event_payload={"build": 41, "ok": True})
    tagged = bot.chat_postMessage(channel=channel, text="build 41 finished", metadata=meta)
    history = alice.conversations_history(channel=channel, limit=1, include_all_metadata=True)["messages"][0]
    assert history["ts"] == tagged["ts"] and history["metadata"] == meta.to_dict(), history
    assert "metadata" not in alice.conversations_history(channel=channel, limit=1)["messages"][0]

    heard, reactions = queue.Queue(), queue.Queue()
    # The classic welcome bot.
    joined = queue.Queue()

    def instance():
        app = App(client=bot)

        @app.message(re.compile(r"^ping (\d+)$"))
        def answer(message, say, context):
            heard.put(message)
            say(text=f"pong {context['matches'][0]}", thread_ts=message["ts"])

        @app.event("reaction_added")
        def reacted(event):
            reactions.put(event)

        @app.event("team_join")
        def welcome(event, client):
            joined.put(event["user"])
            client.chat_postMessage(channel=channel, text=f"welcome, <@{event['user']['id']}>")

        handler = SocketModeHandler(app, app_token=bot_token, web_client=bot)
        handler.connect()
        return handler

    handlers = [instance(), instance()]
    try:
        message = first_heard(heard, lambda n: alice.chat_postMessage(channel=channel, text=f"ping {n}"), "a ping")
        assert message["channel"] == channel and message["user"] == dev["tokens"]["users"]["alice"]["id"]
        assert message["channel_type"] == "channel", message
        number = message["text"].split()[1]

        replies = thread_of(alice, channel, message["ts"], 2)
        # A second answer (the other instance's) would come within this.
        time.sleep(0.5)
        replies = alice.conversations_replies(channel=channel, ts=message["ts"])["messages"]
        assert [m["text"] for m in replies] == [message["text"], f"pong {number}"], replies
        assert replies[1]["user"] == bot_id and replies[1]["bot_id"] == bot_id, replies[1]
        assert replies[1]["bot_profile"]["name"] == made["user"]["name"], replies[1]
        # Every ping that was heard was heard once, by one instance.
        texts = [message["text"]]
        while not heard.empty():
            texts.append(heard.get()["text"])
        assert len(texts) == len(set(texts)), texts

        # A direct message to the bot.
        dm = alice.conversations_open(users=bot_id)["channel"]["id"]
        alice.chat_postMessage(channel=dm, text="ping 99")
        direct = heard.get(timeout=10)
        assert direct["channel"] == dm and direct["channel_type"] == "im", direct

        alice.reactions_add(channel=channel, timestamp=replies[1]["ts"], name="tada")
        event = reactions.get(timeout=10)
        assert event["reaction"] == "tada" and event["item"]["ts"] == replies[1]["ts"], event

        name = "erin" + uuid.uuid4().hex[:6]
        erin = admin.api_call("admin.users.create", json={"name": name})["user"]
        user = joined.get(timeout=10)
        assert user["id"] == erin["id"] and user["name"] == name, user
        deadline, texts = time.time() + 10, []
        while time.time() < deadline:
            texts = [m["text"] for m in alice.conversations_history(channel=channel, limit=1)["messages"]]
            if texts == [f"welcome, <@{erin['id']}>"]:
                break
            time.sleep(0.1)
        assert texts == [f"welcome, <@{erin['id']}>"], texts
        # Welcomed once, by one instance: a second welcome would come within this.
        time.sleep(0.5)
        recent = [m["text"] for m in alice.conversations_history(channel=channel, limit=5)["messages"]]
        assert recent.count(f"welcome, <@{erin['id']}>") == 1, recent
        assert joined.empty(), "team_join reached both instances"
    finally:
        for handler in handlers:
            handler.close()


def test_bolt_app_over_http(dev):
    """A Bolt app in its default mode, an HTTP server (Bolt's WSGI adapter on wsgiref), as a
    bot user: it takes its signing secret from `apps.eventSubscriptions.info`, its URL is
    set (Bolt itself answers the `url_verification` challenge, after checking its
    signature), then it hears a message in its channel and answers in the thread. Bolt checks
    every request's signature: an app with another secret refuses the challenge, and its URL
    is not kept."""
    import re
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from slack_bolt import App
    from slack_bolt.adapter.wsgi import SlackRequestHandler

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    def serve(app):
        server = make_server("127.0.0.1", 0, SlackRequestHandler(app), handler_class=Quiet)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, f"http://127.0.0.1:{server.server_port}/slack/events"

    alice = web(dev, "alice")
    admin = WebClient(token=dev["tokens"]["admin"], base_url=dev["urls"]["api"] + "/")
    made = admin.api_call("admin.users.create", json={"name": "httpbot" + uuid.uuid4().hex[:6], "is_bot": True})
    bot_id = made["user"]["id"]
    bot = WebClient(token=made["token"], base_url=dev["urls"]["api"] + "/")
    secret = bot.api_call("apps.eventSubscriptions.info")["signing_secret"]

    heard = queue.Queue()
    app = App(client=bot, signing_secret=secret)

    @app.message(re.compile(r"^deploy (\w+)$"))
    def deploy(message, say, context):
        heard.put(message)
        say(text=f"deploying {context['matches'][0]}", thread_ts=message["ts"])

    impostor = App(client=bot, signing_secret="0" * 32)
    server, url = serve(app)
    other, other_url = serve(impostor)
    try:
        with pytest.raises(SlackApiError) as err:
            bot.api_call("apps.eventSubscriptions.set", json={"request_url": other_url})
        assert err.value.response["error"] == "url_verification_failed", err.value.response
        assert err.value.response["detail"] == "answered HTTP 401", err.value.response

        done = bot.api_call("apps.eventSubscriptions.set", json={"request_url": url})
        assert done["request_url"] == url and done["signing_secret"] == secret, done
        channel = alice.conversations_create(name="py-http-" + uuid.uuid4().hex[:6])["channel"]["id"]
        bot.conversations_join(channel=channel)
        message = first_heard(heard, lambda n: alice.chat_postMessage(channel=channel, text=f"deploy v{n}"), "a request")
        assert message["channel"] == channel and message["channel_type"] == "channel", message
        version = message["text"].split()[1]
        replies = thread_of(alice, channel, message["ts"], 2)
        assert [m["text"] for m in replies] == [message["text"], f"deploying {version}"], replies
        assert replies[1]["bot_id"] == bot_id, replies[1]
    finally:
        bot.api_call("apps.eventSubscriptions.delete")
        server.shutdown()
        other.shutdown()


def test_auth_revoke(dev):
    """`auth_revoke` as an app calls it at uninstall: `test` revokes nothing; then the token is
    refused with `token_revoked`, and the user's other tokens go on."""
    admin = WebClient(token=dev["tokens"]["admin"], base_url=dev["urls"]["api"] + "/")
    made = admin.api_call("admin.users.create", json={"name": "gone" + uuid.uuid4().hex[:6], "is_bot": True})
    bot = WebClient(token=made["token"], base_url=dev["urls"]["api"] + "/")
    assert bot.auth_revoke(test=True)["revoked"] is False
    assert bot.auth_test()["user_id"] == made["user"]["id"]
    assert bot.auth_revoke()["revoked"] is True
    with pytest.raises(SlackApiError) as err:
        bot.auth_test()
    assert err.value.response["error"] == "token_revoked"
    assert admin.auth_test()["ok"] is True


def test_users_lookup_by_email(dev):
    """How integrations map their own users to Slack's: `users_lookupByEmail`."""
    admin = WebClient(token=dev["tokens"]["admin"], base_url=dev["urls"]["api"] + "/")
    name = "py" + uuid.uuid4().hex[:8]
    created = admin.api_call("admin.users.create", json={"name": name, "email": f"{name}@Example.com"})
    found = web(dev, "bob").users_lookupByEmail(email=f"{name.upper()}@example.com")
    assert found["user"]["id"] == created["user"]["id"]
    assert found["user"]["profile"]["email"] == f"{name}@example.com"
    with pytest.raises(SlackApiError) as err:
        web(dev, "bob").users_lookupByEmail(email="nobody@example.com")
    assert err.value.response["error"] == "users_not_found"


def test_dnd_snooze(dev):
    """`dnd_*` as a client's "pause notifications" uses them: a person snoozes, sees it whole
    (`dnd_info`), teammates see a DND window (`dnd_teamInfo`) and hear `dnd_updated_user` over
    RTM; ending it early says so. A bot cannot snooze."""
    admin = WebClient(token=dev["tokens"]["admin"], base_url=dev["urls"]["api"] + "/")
    made = admin.api_call("admin.users.create", json={"name": "napper" + uuid.uuid4().hex[:6]})
    napper = WebClient(token=made["token"], base_url=dev["urls"]["api"] + "/")
    napper_id = made["user"]["id"]
    bob = web(dev, "bob")
    rtm, events, hello = rtm_client(dev, "bob", ["dnd_updated_user"])
    rtm.connect()
    try:
        assert hello.wait(10), "no hello over RTM"
        snoozed = napper.dnd_setSnooze(num_minutes=45)
        assert snoozed["snooze_enabled"] is True and 2690 <= snoozed["snooze_remaining"] <= 2700, snoozed
        own = napper.dnd_info()
        assert own["snooze_enabled"] is True and own["snooze_endtime"] == snoozed["snooze_endtime"], own
        seen = bob.dnd_info(user=napper_id)
        assert seen["dnd_enabled"] is True and "snooze_enabled" not in seen, seen
        team = bob.dnd_teamInfo(users=[napper_id, dev["tokens"]["users"]["bob"]["id"]])["users"]
        assert team[napper_id]["next_dnd_end_ts"] == snoozed["snooze_endtime"], team
        assert team[dev["tokens"]["users"]["bob"]["id"]]["dnd_enabled"] is False, team
        ended = napper.dnd_endSnooze()
        assert ended["snooze_enabled"] is False and ended["dnd_enabled"] is False, ended
        with pytest.raises(SlackApiError) as err:
            napper.dnd_endSnooze()
        assert err.value.response["error"] == "snooze_not_active"

        heard = []
        deadline = time.time() + 10
        while time.time() < deadline and len(heard) < 2:
            try:
                event = events.get(timeout=1)
            except queue.Empty:
                continue
            if event["user"] == napper_id:
                heard.append(event["dnd_status"]["dnd_enabled"])
        assert heard == [True, False], heard
    finally:
        rtm.close()
    bot = WebClient(token=admin.api_call("admin.users.create", json={"name": "nobot" + uuid.uuid4().hex[:6], "is_bot": True})["token"],
                    base_url=dev["urls"]["api"] + "/")
    with pytest.raises(SlackApiError) as err:
        bot.dnd_setSnooze(num_minutes=5)
    assert err.value.response["error"] == "not_allowed_token_type"
