"""Issue 14, item 4, the social half: two people sign up in the web client, follow each
other, one posts a picture and the other sees it arrive live, likes it and comments on
it, and the author's unread badge counts each of those as it happens."""

from __future__ import annotations

import re

from playwright.async_api import FilePayload, expect

from tests.browser.conftest import LiveServer, Person
from tests.browser.ui import (
    badge,
    connected,
    eventually,
    new_who,
    open_profile,
    picture,
    post_card,
    screen,
    sign_up,
    tid,
)


async def test_sign_up_follow_post_like_comment(live: LiveServer, people: tuple[Person, Person]) -> None:
    alice, bob = people
    a, b = new_who("alice"), new_who("bob")

    await alice.page.goto(live.url + "/")
    await screen(alice, "login")
    await alice.shot("login")
    await sign_up(alice, live.url, a)
    await sign_up(bob, live.url, b)
    await connected(alice)
    await connected(bob)
    await expect(tid(alice, "feed-empty")).to_be_visible()
    await alice.shot("empty feed")

    # Follow each other from the profiles; each follow reaches the other's badge live.
    await open_profile(alice, b.username)
    await tid(alice, "profile-follow").click()
    await expect(tid(alice, "profile-follow")).to_have_attribute("aria-pressed", "true")
    await expect(tid(alice, "profile-followers")).to_contain_text("1")
    await alice.shot("bob's profile, followed")
    await badge(bob, "notif-badge", 1)

    await open_profile(bob, a.username)
    await expect(tid(bob, "profile-follows-you")).to_be_visible()
    await tid(bob, "profile-follow").click()
    await expect(tid(bob, "profile-follow")).to_have_attribute("aria-pressed", "true")
    await bob.shot("alice's profile, followed")
    await badge(alice, "notif-badge", 1)
    await tid(bob, "nav-feed").click()
    await screen(bob, "feed")

    # alice posts a picture: previewed before, shown in her feed after.
    await tid(alice, "nav-feed").click()
    await screen(alice, "feed")
    await tid(alice, "composer-text").fill("First light over the harbour")
    await tid(alice, "composer-file-input").set_input_files(
        files=[FilePayload(name="harbour.png", mimeType="image/png", buffer=picture())]
    )
    await expect(tid(alice, "composer-preview")).to_have_count(1)
    await expect(tid(alice, "composer-preview")).to_have_attribute("data-name", "harbour.png")
    await alice.shot("composer with a picture")
    await tid(alice, "composer-submit").click()
    mine = tid(alice, "post").filter(has_text="First light over the harbour")
    await expect(mine).to_have_count(1)
    await expect(mine.get_by_test_id("post-media")).to_have_count(1)
    await expect(tid(alice, "composer-text")).to_have_value("")
    post_id = await mine.get_attribute("data-post-id")
    assert post_id
    # "your post is out": the author's own `post` notification.
    await badge(alice, "notif-badge", 2)
    await alice.shot("feed with her post")

    # bob's feed, already open, learns of it live: the bar, then the post at the top.
    bar = tid(bob, "feed-new-posts")
    await expect(bar).to_be_visible()
    await bob.shot("new posts bar")
    await bar.click()
    await expect(tid(bob, "post").first).to_have_attribute("data-post-id", post_id)
    theirs = post_card(bob, post_id)
    await expect(theirs.get_by_test_id("post-content")).to_have_text("First light over the harbour")
    image = theirs.get_by_test_id("post-media")
    await expect(image).to_be_visible()
    # Loaded, and from a WebP preview rather than the 480 px original: on a phone-width
    # page the 400 px preview fills the card.
    await eventually(lambda: image.evaluate("img => img.complete && img.naturalWidth > 0"), True)
    shown = await image.evaluate("img => fetch(img.currentSrc).then(r => r.headers.get('content-type'))")
    assert shown == "image/webp", shown
    await expect(bar).to_be_hidden()
    await bob.shot("feed with alice's post")

    # bob likes it: the count on his card, and alice's badge.
    await theirs.get_by_test_id("post-like").click()
    await expect(theirs.get_by_test_id("post-like")).to_have_attribute("aria-pressed", "true")
    await expect(theirs.get_by_test_id("post-likes-count")).to_have_text("1")
    await badge(alice, "notif-badge", 3)

    # bob comments: shown under the post, counted, and on alice's badge.
    await theirs.get_by_test_id("post-comments-toggle").click()
    await theirs.get_by_test_id("comment-input").fill("Beautiful, where is this?")
    await theirs.get_by_test_id("comment-submit").click()
    comment = theirs.get_by_test_id("comment").filter(has_text="Beautiful, where is this?")
    await expect(comment).to_have_count(1)
    await expect(comment.get_by_test_id("comment-author")).to_contain_text(b.name)
    await expect(theirs.get_by_test_id("post-comments-count")).to_contain_text("1")
    await bob.shot("liked and commented")
    await badge(alice, "notif-badge", 4)
    await alice.shot("badge at four")

    # alice reads her notifications: all four, newest first, then the badge clears.
    await tid(alice, "nav-notifications").click()
    await screen(alice, "notifications")
    items = tid(alice, "notification")
    await expect(items).to_have_count(4)
    assert [await items.nth(i).get_attribute("data-type") for i in range(4)] == ["comment", "like", "post", "follow"]
    await badge(alice, "notif-badge", 0)
    await alice.shot("notifications")

    # Her own feed shows bob's like and comment on her post too (after a reload: the
    # counts come from the server, not from what this page did).
    await tid(alice, "nav-feed").click()
    await alice.page.reload()
    mine = post_card(alice, post_id)
    await expect(mine.get_by_test_id("post-likes-count")).to_have_text("1")
    await expect(mine.get_by_test_id("post-comments-count")).to_contain_text("1")

    # The other screens, each seen once: her profile and followers, a post's own page,
    # the settings; bob logs out and looks at the forgotten-password form.
    await tid(alice, "nav-profile").click()
    await screen(alice, "profile")
    await expect(tid(alice, "profile-posts").get_by_test_id("post")).to_have_count(1)
    await alice.shot("own profile")
    await tid(alice, "profile-followers").click()
    await screen(alice, "follow-list")
    await expect(tid(alice, "follow-list-item")).to_have_count(1)
    await expect(tid(alice, "follow-list-item")).to_have_attribute("data-user-id", b.id)
    await alice.shot("followers")
    await alice.page.goto(f"{live.url}/#/post/{post_id}")
    await screen(alice, "post")
    await expect(post_card(alice, post_id).get_by_test_id("comment")).to_have_count(1)
    await alice.shot("the post's page")
    await tid(alice, "nav-settings").click()
    await screen(alice, "settings")
    await expect(tid(alice, "settings-name")).to_have_value(a.name)
    await alice.shot("settings")

    await tid(bob, "nav-logout").click()
    await screen(bob, "login")
    await expect(tid(bob, "app")).not_to_have_attribute("data-user-id", re.compile(".+"))
    await tid(bob, "link-forgot").click()
    await screen(bob, "forgot")
    await bob.shot("forgot password")
