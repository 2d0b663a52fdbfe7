"""Dead letters and lost trade ranges on the dead-letter topic.

A dead letter: value = the raw frame, headers ``tickwire-stream``, ``tickwire-reason``,
``tickwire-plugin``, ``tickwire-received-at``; keyed by the stream's name. A range of trades lost
for good (``write_gaps``) is a dead letter too, the range and the reason in the
``tickwire-reason`` header and the value (JSON).
"""

from __future__ import annotations

from tickwire.framework.components import DeadLetter, TradeGap
from tickwire.framework.resume import gap_dead_letter
from tickwire.plugins.kafka.delivery import Delivery
from tickwire.plugins.kafka.messages import Message
from tickwire.plugins.kafka.topics import SINK_TYPE


def dead_letter_messages(letters: list[DeadLetter], topic: str) -> list[Message]:
    messages = []
    for letter in letters:
        stream = (letter.stream or "").encode()
        headers = [
            ("tickwire-stream", stream),
            ("tickwire-reason", letter.reason.encode()),
            ("tickwire-plugin", letter.plugin.encode()),
            ("tickwire-received-at", letter.received_at.encode()),
        ]
        raw = letter.raw.encode() if isinstance(letter.raw, str) else bytes(letter.raw)
        messages.append((topic, stream or None, raw, headers))
    return messages


class DeadLetterTopic:
    """Writes dead letters and lost ranges of the sink ``name`` to ``topic`` through ``delivery``."""

    def __init__(self, name: str, who: str, topic: str, delivery: Delivery, log):
        self.name = name
        self.who = who
        self.topic = topic
        self.delivery = delivery
        self.log = log
        self._exists: bool | None = None  # checked at the first write_gaps

    async def write(self, letters: list[DeadLetter]) -> None:
        await self.delivery.deliver({None: dead_letter_messages(letters, self.topic)})

    async def write_gaps(self, gaps: list[TradeGap]) -> None:
        """One record per range. Should the topic not exist (it is provisioned with the stream
        topics), the log line and the metric the engine made are the record: waiting for the
        topic would stall every write."""
        producer = self.delivery.producer
        if self._exists is None and producer.current is not None and not self.delivery.spooling:
            self._exists = self.topic in await producer.topics_on_broker()
        if self._exists is False:
            self.log.error(f"{self.who}: topic {self.topic} does not exist; {len(gaps)} lost range(s) not "
                           "recorded in Kafka (run `tickwire kafka provision`)")
            return
        await self.write([gap_dead_letter(gap, f"{SINK_TYPE}:{self.name}") for gap in gaps])
