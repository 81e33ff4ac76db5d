"""The chaos soak's pure parts: the seeded plan, and where the proxy may splice a frame."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from entrypoints.chaos import schedule
from entrypoints.chaos.proxy import _FrameBoundaries, text_frame
from entrypoints.chaos.schedule import BY_NAME, CATALOG, SCENES, plan


def first_episodes(seed: int, n: int = 20) -> list[str]:
    chosen = plan(seed, 600, block_s=300)
    return [
        e.describe() for block in chosen.blocks for e in itertools.islice(chosen.episodes(block), n)
    ]


def test_the_same_seed_replays_the_same_faults_and_another_seed_does_not() -> None:
    assert first_episodes(7) == first_episodes(7)
    assert first_episodes(7) != first_episodes(8)


def test_scenes_rotate_from_the_seed_and_each_episode_fits_its_scene() -> None:
    for seed in range(3):
        chosen = plan(seed, 180, block_s=60)
        assert [b.scene for b in chosen.blocks] == [SCENES[(seed + i) % 3] for i in range(3)]
        for block in chosen.blocks:
            for episode in itertools.islice(chosen.episodes(block), 50):
                kinds = [BY_NAME[name] for name, _ in episode.faults]
                assert all(block.scene in k.scenes for k in kinds)
                assert len(kinds) == 1 or not any(k.exclusive for k in kinds)
                assert all(
                    k.hold_s[0] <= hold <= k.hold_s[1]
                    for k, (_, hold) in zip(kinds, episode.faults, strict=True)
                )


def test_excluded_kinds_are_played_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    held_back = dataclasses.replace(BY_NAME["feed.drop"], excluded="a defect not fixed yet")
    catalog = tuple(held_back if k.name == "feed.drop" else k for k in CATALOG)
    monkeypatch.setattr(schedule, "CATALOG", catalog)
    assert "feed.drop" not in {k.name for k in plan(1, 600).kinds}
    asked = plan(1, 600, only=["feed.drop"], include_excluded=True)
    played = {
        n
        for b in asked.blocks
        for e in itertools.islice(asked.episodes(b), 30)
        for n, _ in e.faults
    }
    assert played == {"feed.drop"}


def test_a_frame_is_spliced_only_between_whole_messages() -> None:
    upgrade = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
    first, second = text_frame(b'[{"T":"q"}]'), text_frame(b"x" * 300)
    fragment = bytes([0x01, 3]) + b"abc"  # a text message's first fragment (FIN clear)
    final = bytes([0x80, 2]) + b"de"  # its continuation, FIN set
    stream = upgrade + first + second + fragment + final
    cuts: list[int] = []
    boundaries = _FrameBoundaries()
    done = 0
    for byte in range(len(stream)):  # one byte at a time: the worst case for the parser
        before, after = boundaries.split(stream[byte : byte + 1])
        if not after and boundaries.at_boundary:
            cuts.append(byte + 1)
        done += len(before) + len(after)
    assert done == len(stream)
    ends = [len(upgrade), len(upgrade + first), len(upgrade + first + second), len(stream)]
    assert cuts == ends  # never inside a frame, never between the two fragments
