"""The NATS engine: durable topics in JetStream, ephemeral ones on core NATS.

The only package of tidings that imports ``nats``; NATS errors become
``tidings.errors`` here and nowhere else.

Layout in NATS (``docs/scaling.md`` draws it):

- One stream per durable namespace and shard, ``TIDINGS_<ns>_<shard>``, with
  subjects ``tidings.<shard>.<ns>.>``. A topic ``conv/team-7/a.b`` is the
  subject ``tidings.<shard>.conv.team-7.a%b``: ``/`` becomes ``.`` and a ``.``
  inside a segment becomes ``%`` (not in the topic alphabet, so the mapping is
  reversible). Streams are per namespace as well as per shard because JetStream
  retention (``max_age``, ``max_msgs_per_subject``) is per stream and tidings'
  is per namespace.
- A message's offset is its stream sequence. A topic lives in one stream, so
  its offsets are strictly increasing, and, as with the embedded log, not
  contiguous. A stored message is the embedded log's record payload
  (``[id, sender, ts, body, parent, lamport, headers]``, msgpack).
- ``Nats-Msg-Id`` is a 128-bit BLAKE2b of ``topic NUL id``: JetStream dedups per
  stream, tidings per topic, and an id may hold any character. A duplicate's
  ack carries the original's sequence, which is its offset. The dedup window is
  JetStream's ``duplicate_window`` (``dedup_window_s``; capped by ``max_age``).
- Every gateway follows every stream from where it stood at start-up with one
  ephemeral ordered push consumer per stream (``_Tail``): that feeds
  ``on_commit``. There is no JetStream consumer per agent or conversation;
  durable consumers' cursors live in the key-value bucket ``tidings_cursors``.
- Ephemeral topics are core NATS subjects ``tidings.eph.<topic>``.
- Presence: each gateway writes its connections behind into the key-value
  bucket ``tidings_presence`` (in memory, replicated, entries expire after
  ``presence_lease_s`` unless renewed; ``tidings.leases``). A process that
  answers ``presence_view()`` follows that bucket's stream with a ``Tail``.

Modules: ``engine`` (streams, publishing, reading, cursors, presence), ``tail``
(following a stream in order), ``peers`` (the other gateways: liveness, consumer
ownership, messages between gateways), ``subjects`` (topic <-> subject),
``calls`` (retrying through elections; NATS errors to tidings errors).
"""

from tidings.engine.nats.engine import NatsEngine

__all__ = ["NatsEngine"]
