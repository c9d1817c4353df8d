#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
"""Writes the seed corpora of the message targets from the golden vectors
(shared/vectors/vmbus-messages.json). Run from fuzz/: python3 make_seeds.py [path-to-shared]"""
import json, os, struct, sys

shared = sys.argv[1] if len(sys.argv) > 1 else os.path.join("..", "..", "shared")
doc = json.load(open(os.path.join(shared, "vectors", "vmbus-messages.json")))
os.makedirs("corpus/channel_message", exist_ok=True)
os.makedirs("corpus/synic_message", exist_ok=True)
# A handful of message shapes: fixed-size, header-only, GPADL tails, the legacy short form.
KEEP = {
    "offer_channel_netvsc_subchannel", "open_channel", "gpadl_header_2_ranges", "gpadl_body_3_pfns",
    "initiate_contact_v5_3", "version_response_accepted", "version_supported_legacy", "request_offers",
    "tl_connect_request", "modify_channel_response",
}
for v in doc["vectors"]:
    if v["name"] not in KEEP:
        continue
    raw = bytes.fromhex(v["hex"])
    if v["struct"] == "hv_input_post_message":
        size = struct.unpack_from("<I", raw, 12)[0]
        msg = raw[16:16 + size]
    else:
        msg = raw
    open(f"corpus/channel_message/{v['name']}", "wb").write(msg)
    # A SynIC slot: type 1 (VMBus), payload_size, flags 0, reserved, sender 0, payload.
    slot = struct.pack("<IBBHQ", 1, len(msg), 0, 0, 0) + msg + bytes(240 - len(msg))
    open(f"corpus/synic_message/{v['name']}", "wb").write(slot)

# Ring packets for packet_parse (the control page is not a packet).
ring = json.load(open(os.path.join(shared, "vectors", "ring-packets.json")))
os.makedirs("corpus/packet_parse", exist_ok=True)
for v in ring["vectors"]:
    if v["struct"] != "hv_ring_buffer":
        open(f"corpus/packet_parse/{v['name']}", "wb").write(bytes.fromhex(v["hex"]))
