"""End to end: Kafka consumer groups with real clients against ``polystream serve``.

confluent-kafka (librdkafka), kafka-python, aiokafka and kcat consume with ``subscribe()`` /
``-G``; offsets are committed through the group coordinator and survive a restart.  Session and
poll timeouts are small so that rebalances take well under a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import confluent_kafka as ck
import pytest
from conftest import ServerFactory, ServerProcess
from tools import require_tool

pytestmark = pytest.mark.slow

CLIENT_TIMEOUT_S = 20.0
FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 200,
              "max.poll.interval.ms": 10000, "auto.offset.reset": "earliest",
              "enable.auto.commit": False}
CONFIG = "[handlers.kafka]\nnum_partitions = 3\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server (3 partitions per auto-created topic) for the tests that need no restart."""
    factory = ServerFactory(tmp_path_factory.mktemp("kafka-groups-e2e"))
    try:
        yield factory("kafka", config=CONFIG, log_level="info")
    finally:
        factory.close()


def bootstrap(server: ServerProcess) -> str:
    host, port = server.address("kafka")
    return f"{host}:{port}"


def produce(server: ServerProcess, topic: str, count: int, start: int = 0
            ) -> set[tuple[int, int]]:
    """``count`` records spread over the topic's partitions; their ``(partition, offset)``."""
    producer = ck.Producer({"bootstrap.servers": bootstrap(server), "acks": "all",
                            "enable.idempotence": False, "linger.ms": 5})
    reports: list[Any] = []
    for i in range(start, start + count):
        producer.produce(topic, f"value {i}".encode(), key=f"key-{i}".encode(),
                         on_delivery=lambda err, msg: reports.append((err, msg)))
    assert producer.flush(CLIENT_TIMEOUT_S) == 0
    assert all(err is None for err, _ in reports)
    return {(msg.partition(), msg.offset()) for _, msg in reports}


def consumer(server: ServerProcess, group: str, **config: Any) -> ck.Consumer:
    return ck.Consumer({"bootstrap.servers": bootstrap(server), "group.id": group,
                        **FAST_GROUP, **config})


def consume(c: ck.Consumer, count: int, timeout: float = CLIENT_TIMEOUT_S
            ) -> list[tuple[int, int]]:
    """Poll until ``count`` records arrived; commit each synchronously; their positions."""
    got: list[tuple[int, int]] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        msg = c.poll(0.2)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        got.append((msg.partition(), msg.offset()))
        c.commit(message=msg, asynchronous=False)
    return got


# -- confluent-kafka ---------------------------------------------------------------------------


def test_confluent_group_resumes_after_restart(polystream_server: ServerFactory) -> None:
    first = polystream_server("kafka", config=CONFIG, log_level="info")
    produced = produce(first, "resume", 30)
    c = consumer(first, "resumers")
    c.subscribe(["resume"])
    try:
        got = consume(c, 30)
    finally:
        c.close()
    assert sorted(got) == sorted(produced)
    assert first.terminate() == 0

    second = polystream_server("kafka", config=CONFIG, data_dir=first.data_dir,
                               log_level="info")
    more = produce(second, "resume", 12, start=30)
    c = consumer(second, "resumers")
    c.subscribe(["resume"])
    try:
        got = consume(c, 12)
        assert sorted(got) == sorted(more)  # nothing from before the restart is read again
        assert c.poll(1.0) is None
        committed = c.committed([ck.TopicPartition("resume", p) for p in range(3)],
                                timeout=CLIENT_TIMEOUT_S)
    finally:
        c.close()
    ends = {p: max(o for q, o in produced | more if q == p) + 1 for p, _ in produced | more}
    assert {tp.partition: tp.offset for tp in committed} == ends


class PollingThreads:
    """One thread per consumer polling it (and committing what it reads), as applications do.

    A synchronous commit sent while its consumer's JoinGroup is parked is answered only after
    that JoinGroup (a Kafka connection answers in request order), and the JoinGroup only once
    every member has rejoined.  Polling all consumers from one thread therefore deadlocks the
    rebalance whenever another member needs a ``poll()`` (its rebalance callback) to rejoin,
    until ``max.poll.interval.ms`` makes that member leave the group -- its next commit is then
    refused with UNKNOWN_MEMBER_ID, as Kafka refuses it.  Hence a thread per consumer.
    """

    def __init__(self, count: int, step: Callable[[int], None]) -> None:
        self.failures: list[BaseException] = []
        self._step = step
        self._stops = [threading.Event() for _ in range(count)]
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(count)]

    def _run(self, index: int) -> None:
        try:
            while not self._stops[index].is_set():
                self._step(index)
        except BaseException as exc:  # re-raised in the test's thread by check()
            self.failures.append(exc)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, *indexes: int) -> None:
        """Stop polling these consumers (all if none named) and wait for their threads."""
        for i in indexes or range(len(self._threads)):
            self._stops[i].set()
        for i in indexes or range(len(self._threads)):
            if self._threads[i].is_alive():
                self._threads[i].join(CLIENT_TIMEOUT_S)
                assert not self._threads[i].is_alive(), f"consumer {i} is stuck"

    def check(self) -> None:
        """Re-raise the first failure of a polling thread."""
        if self.failures:
            raise self.failures[0]

    def wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Whether ``condition()`` held within ``timeout`` seconds (stops at a failure)."""
        deadline = time.monotonic() + timeout
        while not condition():
            self.check()
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True


@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
def test_three_consumers_rebalance_without_loss_or_rereading(server: ServerProcess,
                                                             strategy: str) -> None:
    topic, group = f"rebalance-{strategy}", f"trio-of-consumers-{strategy}"
    produced = produce(server, topic, 60)
    members = [consumer(server, group, **{"client.id": f"member-{i}",
                                          "partition.assignment.strategy": strategy})
               for i in range(3)]
    lock = threading.Lock()  # guards everything below that the polling threads touch
    assigned: list[set[int]] = [set(), set(), set()]
    read_by = [0, 0, 0]
    consumed: set[tuple[int, int]] = set()
    committed_upto = {0: 0, 1: 0, 2: 0}  # per partition: every offset below is committed

    def on_assign(i: int) -> Any:
        # eager assignors revoke everything first; cooperative ones hand out increments
        def assign(c: ck.Consumer, partitions: list[ck.TopicPartition]) -> None:
            with lock:
                assigned[i] |= {tp.partition for tp in partitions}

        def revoke(c: ck.Consumer, partitions: list[ck.TopicPartition]) -> None:
            with lock:
                assigned[i] -= {tp.partition for tp in partitions}
        return {"on_assign": assign, "on_revoke": revoke}

    def poll_and_commit(i: int) -> None:
        c = members[i]
        msg = c.poll(0.05)
        if msg is None or msg.error() is not None:
            return
        partition, offset = msg.partition(), msg.offset()
        assert partition is not None and offset is not None
        with lock:
            assert offset >= committed_upto[partition], "a committed record was read again"
            consumed.add((partition, offset))
            read_by[i] += 1
        try:
            c.commit(message=msg, asynchronous=False)
        except ck.KafkaException as exc:
            # during a rebalance Kafka refuses commits; the record then counts as uncommitted
            assert exc.args[0].code() in (ck.KafkaError.REBALANCE_IN_PROGRESS,
                                          ck.KafkaError.ILLEGAL_GENERATION), exc
        else:
            with lock:
                committed_upto[partition] = max(committed_upto[partition], offset + 1)

    def settled() -> bool:
        with lock:
            return sorted(len(a) for a in assigned) == [1, 1, 1]

    for i, c in enumerate(members):
        c.subscribe([topic], **on_assign(i))
    pollers = PollingThreads(len(members), poll_and_commit)
    closed: set[int] = set()
    try:
        pollers.start()
        # everyone polls until the group has settled with one partition each
        assert pollers.wait_until(settled, CLIENT_TIMEOUT_S)
        # the third member reads a little more of its partition (if any is left), and leaves
        with lock:
            read_before = read_by[2]
            its_records = {r for r in produced if r[0] in assigned[2]}

        def third_read_a_little() -> bool:
            with lock:
                return read_by[2] >= read_before + 3 or its_records <= consumed
        pollers.wait_until(third_read_a_little, 5.0)
        pollers.stop(2)
        members[2].close()
        closed.add(2)

        def survivors_have_read_everything() -> bool:
            with lock:
                return consumed == produced and assigned[0] | assigned[1] == {0, 1, 2}
        pollers.wait_until(survivors_have_read_everything, CLIENT_TIMEOUT_S)
        pollers.stop()
        pollers.check()
        assert assigned[0] | assigned[1] == {0, 1, 2}
        assert consumed == produced, "a record was skipped"
    finally:
        pollers.stop()
        for i, c in enumerate(members):
            if i not in closed:
                c.close()


def test_static_member_rejoins_without_rebalance(server: ServerProcess) -> None:
    topic, group = "static", "statics"
    produce(server, topic, 6)
    assignments: dict[str, list[set[int]]] = {"a": [], "b": []}

    def member(name: str) -> ck.Consumer:
        c = consumer(server, group, **{"group.instance.id": name})
        c.subscribe([topic], on_assign=lambda _c, parts: assignments[name].append(
            {tp.partition for tp in parts}))
        return c

    def settled() -> bool:  # both hold their share of the latest generation
        if not (assignments["a"] and assignments["b"]):
            return False
        mine, theirs = assignments["a"][-1], assignments["b"][-1]
        return mine | theirs == {0, 1, 2} and not mine & theirs

    a, b = member("a"), member("b")
    try:
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while not settled() and time.monotonic() < deadline:
            a.poll(0.05)
            b.poll(0.05)
        assert settled()
        before_a, rounds_b = assignments["a"][-1], len(assignments["b"])
        a.close()  # a static member does not leave the group when it closes
        a = member("a")
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while len(assignments["a"]) < 2 and time.monotonic() < deadline:
            a.poll(0.05)
            b.poll(0.05)
        for _ in range(10):  # give a rebalance, if one were wrongly started, time to show
            a.poll(0.05)
            b.poll(0.05)
        assert assignments["a"][-1] == before_a
        assert len(assignments["b"]) == rounds_b, "the other member saw a rebalance"
    finally:
        a.close()
        b.close()


KILLED_MEMBER = """
import sys, confluent_kafka as ck
c = ck.Consumer({"bootstrap.servers": sys.argv[1], "group.id": sys.argv[2],
                 "session.timeout.ms": 1500, "heartbeat.interval.ms": 100,
                 "max.poll.interval.ms": 10000, "auto.offset.reset": "earliest"})
c.subscribe([sys.argv[3]], on_assign=lambda _c, parts: print(
    "assigned", len(parts), flush=True))
while True:
    c.poll(0.1)
"""


def test_killed_member_expires_and_its_partitions_move(server: ServerProcess) -> None:
    import sys

    topic, group = "killed", "with-a-casualty"
    produce(server, topic, 3)
    survivor = consumer(server, group, **{"session.timeout.ms": 1500,
                                          "heartbeat.interval.ms": 100})
    owned: set[int] = set()
    survivor.subscribe([topic], on_assign=lambda _c, parts: owned.update(
        tp.partition for tp in parts), on_revoke=lambda _c, parts: owned.difference_update(
        tp.partition for tp in parts))
    victim = subprocess.Popen([sys.executable, "-c", KILLED_MEMBER, bootstrap(server), group,
                               topic], stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(CLIENT_TIMEOUT_S, victim.kill)
    watchdog.start()
    lines: list[str] = []
    assert victim.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(victim.stdout or ()), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while not lines and time.monotonic() < deadline:
            survivor.poll(0.05)  # the survivor must keep polling to take part in rebalances
        assert lines and lines[0].startswith("assigned")
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while len(owned) == 3 and time.monotonic() < deadline:  # wait for the split
            survivor.poll(0.05)
        assert len(owned) < 3
        victim.kill()  # no LeaveGroup: only its session expiring removes it
        victim.wait(timeout=CLIENT_TIMEOUT_S)
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while owned != {0, 1, 2} and time.monotonic() < deadline:
            survivor.poll(0.05)
        assert owned == {0, 1, 2}
    finally:
        watchdog.cancel()
        victim.kill()
        victim.wait(timeout=CLIENT_TIMEOUT_S)
        survivor.close()


def test_duplicate_static_instance_is_fenced(server: ServerProcess) -> None:
    topic, group = "fenced", "fencing"
    produce(server, topic, 3)
    first = consumer(server, group, **{"group.instance.id": "same"})
    first.subscribe([topic])
    second = None
    try:
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while not first.assignment() and time.monotonic() < deadline:
            first.poll(0.05)
        assert first.assignment()
        second = consumer(server, group, **{"group.instance.id": "same"})
        second.subscribe([topic])
        fatal = None
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while fatal is None and time.monotonic() < deadline:
            second.poll(0.05)
            try:
                msg = first.poll(0.05)
            except ck.KafkaException as exc:
                fatal = exc.args[0]
            else:
                if msg is not None and msg.error() is not None:
                    fatal = msg.error()
        # librdkafka turns FENCED_INSTANCE_ID into a fatal error of the fenced consumer
        assert fatal is not None and fatal.code() == ck.KafkaError._FATAL, fatal
        assert "fenced" in fatal.str()
        assert second.assignment()
    finally:
        for c in (first, second):
            if c is not None:
                with contextlib.suppress(ck.KafkaException):
                    c.close()


# -- kafka-python, aiokafka, kcat ---------------------------------------------------------------


def test_kafka_python_group_and_admin(server: ServerProcess) -> None:
    import kafka

    topic, group = "kafka-python-group", "kp-group"
    produced = produce(server, topic, 15)
    c = kafka.KafkaConsumer(topic, bootstrap_servers=bootstrap(server), group_id=group,
                            auto_offset_reset="earliest", enable_auto_commit=False,
                            session_timeout_ms=6000, heartbeat_interval_ms=200)
    admin = kafka.KafkaAdminClient(bootstrap_servers=bootstrap(server))
    try:
        got: set[tuple[int, int]] = set()
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while len(got) < len(produced) and time.monotonic() < deadline:
            for records in c.poll(timeout_ms=500).values():
                got |= {(r.partition, r.offset) for r in records}
        c.commit()
        assert got == produced
        listed = {g["group_id"]: g for g in admin.list_groups()}
        assert listed[group]["protocol_type"] == "consumer"
        described = admin.describe_groups([group])[group]
        assert described["error"] is None
        assert described["group_state"] == "Stable"
        assert described["protocol_type"] == "consumer"
        assert len(described["members"]) == 1
        offsets = admin.list_group_offsets(group)[group]
        assert {tp.partition: meta.offset for tp, meta in offsets.items()} == {
            p: max(o for q, o in produced if q == p) + 1 for p, _ in produced}
        assert admin.delete_groups([group]) == {group: "NonEmptyGroupError"}
    finally:
        c.close()
    try:
        assert admin.delete_groups([group]) == {group: "OK"}
        assert group not in {g["group_id"] for g in admin.list_groups()}
        assert admin.list_group_offsets(group)[group] == {}
    finally:
        admin.close()


def test_aiokafka_group_consumer(server: ServerProcess) -> None:
    import aiokafka

    topic, group = "aiokafka-group", "aio-group"
    produced = produce(server, topic, 15)

    async def main() -> set[tuple[int, int]]:
        c = aiokafka.AIOKafkaConsumer(topic, bootstrap_servers=bootstrap(server),
                                      group_id=group, auto_offset_reset="earliest",
                                      enable_auto_commit=False, session_timeout_ms=6000,
                                      heartbeat_interval_ms=200)
        await c.start()
        got: set[tuple[int, int]] = set()
        try:
            deadline = time.monotonic() + CLIENT_TIMEOUT_S
            while len(got) < len(produced) and time.monotonic() < deadline:
                for records in (await c.getmany(timeout_ms=500)).values():
                    got |= {(r.partition, r.offset) for r in records}
            await c.commit()
        finally:
            await c.stop()
        return got

    assert asyncio.run(asyncio.wait_for(main(), 3 * CLIENT_TIMEOUT_S)) == produced
    c = consumer(server, group)
    try:
        committed = c.committed([ck.TopicPartition(topic, p) for p in range(3)],
                                timeout=CLIENT_TIMEOUT_S)
    finally:
        c.close()
    assert {tp.partition: tp.offset for tp in committed} == {
        p: max(o for q, o in produced if q == p) + 1 for p, _ in produced}


def test_kcat_balanced_consumer(server: ServerProcess) -> None:
    kcat = require_tool("kcat")
    topic = "kcat-group"
    produced = produce(server, topic, 9)
    proc = subprocess.Popen(
        [kcat, "-u", "-b", bootstrap(server), "-G", "kcat-group", topic, "-f", "%p %o\n",
         "-X", "topic.auto.offset.reset=earliest", "-X", "session.timeout.ms=6000",
         "-X", "heartbeat.interval.ms=200"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    watchdog = threading.Timer(CLIENT_TIMEOUT_S, proc.kill)  # readline must not hang the run
    watchdog.start()
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(len(produced))]
    finally:
        watchdog.cancel()
        proc.terminate()
        proc.wait(timeout=CLIENT_TIMEOUT_S)
    got = {(int(p), int(o)) for p, o in (line.split() for line in lines)}
    assert got == produced
    check = consumer(server, "kcat-group")
    try:  # kcat committed what it consumed when it closed
        committed = check.committed([ck.TopicPartition(topic, p) for p in range(3)],
                                    timeout=CLIENT_TIMEOUT_S)
    finally:
        check.close()
    assert {tp.partition: tp.offset for tp in committed} == {
        p: max(o for q, o in produced if q == p) + 1 for p, _ in produced}
