"""Every MUST of ``protocol/SPEC.md`` and the tests that would fail if the code broke it.

``REQUIREMENTS`` maps each requirement id of SPEC.md §14 to either

* the pytest node ids that check it, separated by ``" | "`` (a ``[param]`` suffix names one
  case of a parametrized test), or
* ``"out of scope: relay (issue #3)"`` / ``"out of scope: client (issue #4)"`` (or both) for a
  duty of the relay or of the client SDK, which their own test suites must cover.

Rules used to fill it in:

* A requirement is in scope when the protocol package (``liaison.protocol``) implements a
  testable part of it, as SPEC.md §14 "where" or the requirement's own text names. For a mixed
  requirement the listed tests check the protocol part; the comment names the remainder's
  owner, which is not covered here.
* A requirement whose every clause is a relay or client duty is out of scope even when a
  protocol test touches something near it (the comment says which).
* Only tests whose body fails if the code broke the rule are listed; a test's name is not
  evidence. ``tests/protocol/test_requirements.py`` holds the tests written for requirements
  that had none.

``tests/protocol/test_requirement_index.py`` checks that the keys are exactly the ids of
SPEC.md and that every node id listed here exists.
"""

from __future__ import annotations

__all__ = ["CLIENT", "RELAY", "RELAY_AND_CLIENT", "REQUIREMENTS"]

RELAY = "out of scope: relay (issue #3)"
CLIENT = "out of scope: client (issue #4)"
RELAY_AND_CLIENT = "out of scope: relay (issue #3), client (issue #4)"


def _tests(*node_ids: str) -> str:
    return " | ".join(node_ids)


REQUIREMENTS: dict[str, str] = {
    # --- §4 primitives ------------------------------------------------------------------------
    # The relay's and client's own draws (message ids, cell ids) are theirs to test.
    "M-PRIM-1": _tests(
        "tests/protocol/test_requirements.py::test_prim1_randomness_comes_from_the_os_csprng",
        "tests/protocol/test_keys.py::test_generate_draws_exactly_the_key_length",
        "tests/protocol/test_session.py::test_random_draw_order",
    ),
    "M-PRIM-2": _tests(
        "tests/protocol/test_wycheproof.py::test_x25519",
        "tests/protocol/test_session.py::test_low_order_signed_prekey",
        "tests/protocol/test_session.py::test_low_order_setup_ephemeral",
        "tests/protocol/test_ratchet.py::test_low_order_dh_in_authenticated_header",
        "tests/protocol/test_requirements.py::test_prim10_secret_comparisons_are_constant_time",
    ),
    "M-PRIM-3": _tests(
        "tests/protocol/test_wycheproof.py::test_ed25519_verify",
        "tests/protocol/test_requirements.py::test_prim3_strict_ed25519_verification",
        "tests/protocol/test_requirements.py::test_prim3_pure_python_signer_is_sound",
    ),
    "M-PRIM-4": _tests(
        "tests/protocol/test_keys.py::test_identity_key_rejects_unusable_points",
        "tests/protocol/test_keys.py::test_identity_key_rejects_mixed_order_point",
        "tests/protocol/test_session.py::test_unusable_setup_identity",
        "tests/protocol/test_requirements.py::test_prim4_identity_conversion_formula",
        "tests/protocol/test_requirements.py::test_prim4_conversion_rejects_non_points_and_points_outside_the_subgroup",
        "tests/protocol/test_requirements.py::test_prim4_ses2_initiate_refuses_identity_outside_the_subgroup",
        "tests/protocol/test_requirements.py::test_prim4_ses2_respond_refuses_setup_identity_outside_the_subgroup",
    ),
    "M-PRIM-5": _tests(
        "tests/protocol/test_wycheproof.py::test_xchacha20poly1305",
        "tests/protocol/test_wycheproof.py::test_chacha20poly1305",
        "tests/protocol/test_link.py::test_round_trip",
        "tests/protocol/test_link.py::test_truncated_transport_message",
        "tests/protocol/test_envelope.py::test_envelope_literal_message",
        "tests/protocol/test_security.py::test_failed_decryption_never_wedges",
    ),
    "M-PRIM-6": _tests(
        "tests/protocol/test_wycheproof.py::test_xchacha20poly1305",
        "tests/protocol/test_requirements.py::test_prim6_rat4_encryption_nonce_and_associated_data",
        "tests/protocol/test_requirements.py::test_prim6_nonces_are_never_repeated",
    ),
    # Wycheproof's HKDF file has 23 cases with an empty salt (= 32 zero bytes) and the
    # over-long output cases.
    "M-PRIM-7": _tests(
        "tests/protocol/test_wycheproof.py::test_hkdf_sha256",
    ),
    "M-PRIM-8": _tests(
        "tests/protocol/test_requirements.py::test_prim8_chain_kdf_definition",
        "tests/protocol/test_requirements.py::test_prim6_rat4_encryption_nonce_and_associated_data",
    ),
    "M-PRIM-9": _tests(
        "tests/protocol/test_wycheproof.py::test_mlkem768_keygen_from_seed",
        "tests/protocol/test_wycheproof.py::test_mlkem768_decapsulate",
        "tests/protocol/test_wycheproof.py::test_mlkem768_encapsulate_rejects_bad_public_key",
        "tests/protocol/test_ratchet.py::test_invalid_kem_public_in_authenticated_header",
        "tests/protocol/test_requirements.py::test_prim9_bundle_kem_key_failing_the_modulus_check_is_refused",
    ),
    # AEAD tags are compared inside libsodium; the Python-level comparisons are spied on.
    "M-PRIM-10": _tests(
        "tests/protocol/test_keys.py::test_equality_is_constant_time",
        "tests/protocol/test_requirements.py::test_prim10_secret_comparisons_are_constant_time",
    ),
    # --- §5 keys, bundles, enrollment, safety numbers -----------------------------------------
    "M-KEY-1": _tests(
        "tests/protocol/test_keys.py::test_prekey_id_range",
        "tests/protocol/test_keys.py::test_prekey_id_bounds_are_accepted",
        "tests/protocol/test_envelope.py::test_session_setup_rejects_bad_values",
        "tests/protocol/test_frames.py::test_upload_prekeys_reserved_id_refused",
        "tests/protocol/test_requirements.py::test_key1_prekey_kinds_have_separate_id_spaces",
    ),
    # Id bookkeeping lives in the client's key store.
    "M-KEY-2": CLIENT,
    # Storage encrypted at rest and "never leaves the cell" are client duties. (Protocol-side
    # hygiene, private keys never shown by repr, is checked by
    # test_keys.py::test_private_repr_never_shows_the_secret.)
    "M-KEY-3": CLIENT,
    "M-KEY-4": _tests(
        "tests/protocol/test_session.py::test_initiate_rejects_bad_bundle_signature_before_use",
        "tests/protocol/test_session.py::test_decoded_bundle_with_bad_signature_is_rejected",
        "tests/protocol/test_enrollment.py::test_request_signature_checks",
        "tests/protocol/test_requirements.py::test_key4_enr6_enroll_request_verify_checks_every_signature",
    ),
    "M-KEY-5": _tests(
        "tests/protocol/test_session.py::test_bundle_decoder_rejects",
        "tests/protocol/test_session.py::test_bundle_lengths",
    ),
    # Comparing the fetched bundle with the requested cell id and the pinned identity, and
    # alerting the operator, happen in the client.
    "M-KEY-6": CLIENT,
    # Protocol part: 160-bit secret from the rng, the hash formula. Storing only the hash is
    # the relay's.
    "M-ENR-1": _tests(
        "tests/protocol/test_requirements.py::test_enr1_enrollment_secret_entropy_and_stored_hash",
        "tests/protocol/test_enrollment.py::test_code_text_round_trip_and_format",
    ),
    "M-ENR-2": RELAY,
    # Protocol part: the fingerprint and EnrollmentCode.matches (constant time). Pinning the
    # key and never taking one from the network are the client's.
    "M-ENR-3": _tests(
        "tests/protocol/test_enrollment.py::test_code_text_round_trip_and_format",
        "tests/protocol/test_requirements.py::test_enr3_relay_key_accepted_only_by_its_fingerprint",
        "tests/protocol/test_requirements.py::test_prim10_secret_comparisons_are_constant_time",
    ),
    "M-ENR-4": _tests(
        "tests/protocol/test_enrollment.py::test_handshake_round_trip_and_relay_authentication",
        "tests/protocol/test_enrollment.py::test_handshake_to_an_impostor_relay_fails",
        "tests/protocol/test_requirements.py::test_enr4_secret_travels_only_in_noise_message_1_to_the_pinned_key",
    ),
    # Protocol part: EnrollRequest.decode. Answering `malformed_request` is the relay's.
    "M-ENR-5": _tests(
        "tests/protocol/test_enrollment.py::test_request_rejects_bad_counts_and_trailing_bytes",
        "tests/protocol/test_requirements.py::test_enr5_enroll_request_decoder_refuses_malformed_requests",
    ),
    # Protocol part: EnrollmentResponder.read returns the Noise remote static key and
    # EnrollRequest.verify checks all three signatures. Calling them and answering
    # `bad_signature` is the relay's.
    "M-ENR-6": _tests(
        "tests/protocol/test_enrollment.py::test_handshake_round_trip_and_relay_authentication",
        "tests/protocol/test_enrollment.py::test_request_signature_checks",
        "tests/protocol/test_requirements.py::test_key4_enr6_enroll_request_verify_checks_every_signature",
    ),
    "M-ENR-7": RELAY,
    # Protocol part: EnrollmentInitiator.response authenticates message 2. Pinning the cell id
    # is the client's.
    "M-ENR-8": _tests(
        "tests/protocol/test_requirements.py::test_enr8_cell_id_only_from_an_authenticated_message_2",
        "tests/protocol/test_enrollment.py::test_handshake_round_trip_and_relay_authentication",
    ),
    "M-ENR-9": _tests(
        "tests/protocol/test_enrollment.py::test_every_single_character_flip_is_refused_or_another_code",
    ),
    # Protocol part: the version-2 request carries the name. Refusing before the code is
    # burned, and the bounded audit of refusals, are the relay's: tests/server/.
    "M-ENR-10": _tests(
        "tests/protocol/test_enrollment.py::test_named_request_round_trip_and_strict_decoding",
        "tests/server/test_enroll_refusals.py::test_wrong_name_is_refused_without_using_the_code",
    ),
    "M-ENR-11": _tests(
        "tests/server/test_enroll_refusals.py::test_refused_enrollments_are_audited_without_code_material",
        "tests/server/test_enroll_refusals.py::test_failed_enrollment_audit_is_bounded",
    ),
    "M-SN-1": _tests(
        "tests/protocol/test_fingerprint.py::test_displayable_alice_view",
        "tests/protocol/test_fingerprint.py::test_displayable_bob_view",
        "tests/protocol/test_fingerprint.py::test_iteration_count_is_exact",
        "tests/protocol/test_fingerprint.py::test_cell_uses_typed_key_encoding",
        "tests/protocol/test_fingerprint.py::test_cell_known_answer",
        "tests/protocol/test_fingerprint.py::test_cell_symmetric",
    ),
    "M-SN-2": CLIENT,
    # --- §6 link ------------------------------------------------------------------------------
    "M-LINK-1": _tests(
        "tests/protocol/test_noise_vectors.py::test_vector_with_rng",
        "tests/protocol/test_noise_vectors.py::test_hkdf_is_hmac_blake2b_per_spec",
        "tests/protocol/test_noise_vectors.py::test_cipher_state_nonce_format_and_exhaustion",
        "tests/protocol/test_link.py::test_link_is_plain_noise_ik_with_the_liaison_prologue",
        "tests/protocol/test_liaison_vectors.py::test_link_handshake_vector_both_directions",
    ),
    # Protocol part: the handshake only completes with the holder of the key LinkInitiator was
    # given. Taking that key from the enrollment pin only is the client's.
    "M-LINK-2": _tests(
        "tests/protocol/test_link.py::test_cell_pinned_a_different_relay_key",
        "tests/protocol/test_link.py::test_relay_replying_with_a_different_static_key",
    ),
    # LinkInitiator/LinkResponder carry any payload; the empty hello, the welcome's content and
    # the checks on both are the relay's and the client's. (The layout is fixed by
    # test_liaison_vectors.py::test_link_handshake_vector_both_directions.)
    "M-LINK-3": RELAY_AND_CLIENT,
    "M-LINK-4": RELAY,
    "M-LINK-5": RELAY_AND_CLIENT,
    # Protocol part: LinkTransport and decode_frame. Closing the WebSocket is the relay's and
    # the client's.
    "M-LINK-6": _tests(
        "tests/protocol/test_requirements.py::test_link6_one_frame_per_transport_message_with_empty_ad",
        "tests/protocol/test_link.py::test_oversized_transport_message",
        "tests/protocol/test_frames.py::test_frame_larger_than_max_frame_rejected",
    ),
    # Protocol part: the transport is dead after the first failure. Closing the connection is
    # the relay's and the client's.
    "M-LINK-7": _tests(
        "tests/protocol/test_link.py::test_reordered_transport_message",
        "tests/protocol/test_link.py::test_replayed_transport_message",
        "tests/protocol/test_link.py::test_tampered_transport_message",
        "tests/protocol/test_link.py::test_truncated_transport_message",
        "tests/protocol/test_link.py::test_oversized_transport_message",
        "tests/protocol/test_link.py::test_transport_decrypt_raises_only_liaison_errors",
    ),
    "M-LINK-8": _tests(
        "tests/protocol/test_link.py::test_nonce_exhaustion",
        "tests/protocol/test_noise_vectors.py::test_cipher_state_nonce_format_and_exhaustion",
    ),
    "M-LINK-9": RELAY,
    "M-LINK-10": CLIENT,
    "M-LINK-11": _tests(
        "tests/reliability/test_exhaustion.py::test_one_address_cannot_lock_everyone_out",
        "tests/reliability/test_exhaustion.py::test_many_addresses_leave_room_for_known_ones",
        "tests/reliability/test_exhaustion.py::test_handshake_rate_per_address",
        "tests/server/test_handshake_guard.py::test_one_source_gets_its_cap_and_no_more",
        "tests/server/test_handshake_guard.py::test_unknown_sources_leave_the_reserve_to_known_ones",
        "tests/server/test_handshake_guard.py::test_rate_per_source_refills_over_time",
        "tests/server/test_handshake_guard.py::test_sources",
    ),
    "M-LINK-12": _tests(
        "tests/reliability/test_exhaustion.py::test_replayed_hello_is_refused_before_any_work",
        "tests/server/test_handshake_guard.py::test_replayed_ephemerals_within_the_ttl",
    ),
    # --- §7 session setup ---------------------------------------------------------------------
    "M-SES-1": _tests(
        "tests/protocol/test_requirements.py::test_ses1_rat3_setup_derivation_and_ratchet_initialisation",
        "tests/protocol/test_session.py::test_pqxdh_conversation",
        "tests/protocol/test_session.py::test_responder_requires_one_time_prekey_exactly_when_named",
        "tests/protocol/test_liaison_vectors.py::test_transcript_reproduces_every_byte",
    ),
    "M-SES-2": _tests(
        "tests/protocol/test_session.py::test_low_order_signed_prekey",
        "tests/protocol/test_session.py::test_low_order_one_time_prekey",
        "tests/protocol/test_session.py::test_low_order_setup_ephemeral",
        "tests/protocol/test_session.py::test_unusable_setup_identity",
        "tests/protocol/test_requirements.py::test_prim4_ses2_initiate_refuses_identity_outside_the_subgroup",
        "tests/protocol/test_requirements.py::test_prim4_ses2_respond_refuses_setup_identity_outside_the_subgroup",
    ),
    "M-SES-3": _tests(
        "tests/protocol/test_session.py::test_session_ad_layout",
        "tests/protocol/test_session.py::test_both_sides_compute_the_same_ad",
        "tests/protocol/test_session.py::test_ad_binds_cell_ids",
        "tests/protocol/test_session.py::test_ad_binds_identities_and_cells_in_an_established_session",
        "tests/protocol/test_session.py::test_relay_tampering_prekey_envelope",
        "tests/protocol/test_session.py::test_relay_tampering_message_envelope",
    ),
    "M-SES-4": _tests(
        "tests/protocol/test_session.py::test_pending_setup_until_first_reply_is_opened",
    ),
    "M-SES-5": _tests(
        "tests/protocol/test_envelope.py::test_session_setup_rejects_bad_values",
    ),
    # Looking prekeys up by id, identity pinning, choosing and committing sessions: the client's
    # key and session stores. (Session.setup_ephemeral, which M-SES-8 relies on, survives
    # serialization: test_session.py::test_restored_responder_keeps_setup_ephemeral.)
    "M-SES-6": CLIENT,
    "M-SES-7": CLIENT,
    "M-SES-8": CLIENT,
    "M-SES-9": CLIENT,
    "M-SES-10": CLIENT,
    # The session reset (SPEC.md §7.7) is client behaviour; its tests drive real SDK cells
    # through the real relay.
    "M-SES-11": _tests(
        "tests/client/test_home_ops.py::test_hand_copied_home_is_detected_and_reset_session_recovers",
        "tests/client/test_home_ops.py::test_offline_reset_request_is_carried_out_at_the_next_link",
        "tests/client/test_home_ops.py::test_a_reset_is_never_forced_by_failures_alone",
    ),
    "M-SES-12": _tests(
        "tests/client/test_home_ops.py::test_restored_home_resets_its_sessions_and_both_ways_open",
        "tests/client/test_home_ops.py::test_replayed_reset_is_a_duplicate_even_after_pruning",
        "tests/client/test_home_ops.py::test_reset_payload_in_an_existing_session_is_not_a_reset",
        "tests/client/test_home_ops.py::test_reset_held_back_by_the_relay_is_still_shown",
    ),
    "M-SES-13": _tests(
        "tests/client/test_home_ops.py::test_restored_home_resets_its_sessions_and_both_ways_open",
        "tests/client/test_home_ops.py::test_restored_home_skips_one_time_prekey_ids",
        "tests/client/test_home_ops.py::test_cli_backup_restore_end_to_end",
    ),
    # --- §8 ratchet ---------------------------------------------------------------------------
    "M-RAT-1": _tests(
        "tests/protocol/test_requirements.py::test_rat1_root_kdf_definition",
        "tests/protocol/test_requirements.py::test_rat1_rat11_dh_kem_step",
        "tests/protocol/test_requirements.py::test_prim8_chain_kdf_definition",
        "tests/protocol/test_liaison_vectors.py::test_transcript_reproduces_every_byte",
    ),
    "M-RAT-2": _tests(
        "tests/protocol/test_ratchet.py::test_replays_fail_and_leave_state_unchanged",
        "tests/protocol/test_ratchet.py::test_every_causal_delivery_order_opens_each_message_once",
        "tests/protocol/test_security.py::test_forward_secrecy_of_sent_messages",
        "tests/protocol/test_security.py::test_forward_secrecy_copy_cannot_open_the_past",
    ),
    "M-RAT-3": _tests(
        "tests/protocol/test_requirements.py::test_ses1_rat3_setup_derivation_and_ratchet_initialisation",
        "tests/protocol/test_session.py::test_responder_cannot_send_before_opening",
    ),
    "M-RAT-4": _tests(
        "tests/protocol/test_requirements.py::test_prim6_rat4_encryption_nonce_and_associated_data",
        "tests/protocol/test_security.py::test_headers_hide_keys_and_counters",
    ),
    "M-RAT-5": _tests(
        "tests/protocol/test_ratchet.py::test_sending_chain_exhaustion",
    ),
    "M-RAT-6": _tests(
        "tests/protocol/test_requirements.py::test_rat6_header_keys_are_tried_in_the_specified_order",
    ),
    "M-RAT-7": _tests(
        "tests/protocol/test_security.py::test_failed_decryption_never_wedges",
        "tests/protocol/test_ratchet.py::test_single_byte_flip_is_rejected_without_state_change",
        "tests/protocol/test_ratchet.py::test_every_routing_byte_flip",
        "tests/protocol/test_session.py::test_relay_tampering_prekey_envelope",
    ),
    "M-RAT-8": _tests(
        "tests/protocol/test_ratchet.py::test_default_bounds",
        "tests/protocol/test_ratchet.py::test_too_many_skipped_in_current_chain",
        "tests/protocol/test_ratchet.py::test_too_many_skipped_in_previous_chain",
        "tests/protocol/test_ratchet.py::test_too_many_skipped_in_new_chain",
        "tests/protocol/test_ratchet.py::test_huge_skip_request_is_refused_cheaply",
        "tests/protocol/test_ratchet.py::test_oldest_skipped_keys_are_evicted_first",
        "tests/protocol/test_ratchet.py::test_eviction_prefers_older_chains",
        "tests/protocol/test_ratchet.py::test_skipped_store_never_exceeds_bound",
    ),
    "M-RAT-9": _tests(
        "tests/protocol/test_ratchet.py::test_default_bounds",
        "tests/protocol/test_ratchet.py::test_skipped_keys_expire",
        "tests/protocol/test_ratchet.py::test_expired_keys_of_older_chain",
        "tests/protocol/test_ratchet.py::test_expired_keys_are_purged_on_next_skip",
        "tests/protocol/test_ratchet.py::test_replays_fail_and_leave_state_unchanged",
    ),
    "M-RAT-10": _tests(
        "tests/protocol/test_requirements.py::test_rat10_every_decryption_failure_is_one_opaque_error",
        "tests/protocol/test_ratchet.py::test_decrypt_rejects_wrong_lengths",
        "tests/protocol/test_ratchet.py::test_low_order_dh_in_authenticated_header",
        "tests/protocol/test_ratchet.py::test_invalid_kem_public_in_authenticated_header",
        "tests/protocol/test_ratchet.py::test_too_many_skipped_in_current_chain",
    ),
    "M-RAT-11": _tests(
        "tests/protocol/test_requirements.py::test_rat1_rat11_dh_kem_step",
        "tests/protocol/test_ratchet.py::test_each_step_uses_fresh_keys",
    ),
    "M-RAT-12": CLIENT,
    # --- §9 envelope and body -----------------------------------------------------------------
    "M-ENV-1": _tests(
        "tests/protocol/test_envelope.py::test_envelope_length_not_a_bucket",
        "tests/protocol/test_envelope.py::test_envelope_unsupported_version",
        "tests/protocol/test_envelope.py::test_envelope_unknown_kind",
        "tests/protocol/test_envelope.py::test_envelope_unknown_precedence",
        "tests/protocol/test_envelope.py::test_envelope_expiry_above_63_bits",
        "tests/protocol/test_envelope.py::test_sealed_envelope_length_is_a_bucket",
    ),
    "M-ENV-2": _tests(
        "tests/protocol/test_envelope.py::test_envelope_rejects_inconsistent_fields",
        "tests/protocol/test_envelope.py::test_envelope_literal_prekey",
        "tests/protocol/test_envelope.py::test_envelope_literal_message",
    ),
    "M-ENV-3": CLIENT,
    # Session.open does not check the recipient (SPEC.md says so); the early check is the
    # client's.
    "M-ENV-4": CLIENT,
    "M-ENV-5": _tests(
        "tests/protocol/test_envelope.py::test_body_encode_literal_and_padding",
        "tests/protocol/test_envelope.py::test_body_bucket_boundaries",
        "tests/protocol/test_envelope.py::test_body_round_trip",
        "tests/protocol/test_envelope.py::test_sealed_envelope_length_is_a_bucket",
        "tests/protocol/test_envelope.py::test_message_too_large",
        "tests/protocol/test_envelope.py::test_seal_message_too_large_leaves_session_unchanged",
    ),
    "M-ENV-6": _tests(
        "tests/protocol/test_envelope.py::test_body_decode_rejects",
    ),
    # Protocol part (named in the requirement): Session.open commits the ratchet advance and
    # clears the pending setup block before raising. Hiding the message, persisting and ACKing
    # it are the client's.
    "M-ENV-7": _tests(
        "tests/protocol/test_session.py::test_malformed_body_from_peer_is_consumed",
    ),
    # Protocol part: the body carries the number the caller gives (the session counts only
    # without one). Keeping the count per channel, across sessions, is the client's: the
    # client tests pin it.
    "M-ENV-8": _tests(
        "tests/protocol/test_session.py::test_sequence_numbers_count_from_one",
        "tests/protocol/test_session.py::test_responder_cannot_send_before_opening",
        "tests/protocol/test_envelope.py::test_seal_message_too_large_leaves_session_unchanged",
        "tests/protocol/test_requirements.py::test_env8_seal_takes_the_channel_number",
        "tests/client/test_gaps.py::test_channel_numbers_continue_across_sessions",
        "tests/client/test_gaps.py::test_new_identity_starts_a_new_channel",
    ),
    "M-ENV-9": CLIENT,
    # §9.3 client duties, written with the SDK that implements them: the tests are the SDK's
    # (tests/client) and the malicious-relay suite's (tests/reliability).
    "M-ENV-10": _tests(
        "tests/client/test_gaps.py::test_gap_bookkeeping",
        "tests/client/test_gaps.py::test_dropped_message_is_shown_missing_and_reported",
        "tests/client/test_gaps.py::test_late_message_closes_its_gap_and_moves_on_to_delivered",
        "tests/reliability/test_malicious_relay.py::test_dropped_envelopes_are_detected_both_ways",
        "tests/reliability/test_malicious_relay.py::test_tampered_envelopes_are_rejected_and_change_nothing",
    ),
    "M-ENV-11": _tests(
        "tests/client/test_gaps.py::test_dropped_message_is_shown_missing_and_reported",
        "tests/client/test_gaps.py::test_late_message_closes_its_gap_and_moves_on_to_delivered",
        "tests/client/test_gaps.py::test_lost_receipt_is_sealed_again",
        "tests/reliability/test_malicious_relay.py::test_dropped_envelopes_are_detected_both_ways",
    ),
    # §9.4 client duties (the FILE payload), tested with the SDK and CLI that implement them.
    "M-FILE-1": _tests(
        "tests/client/test_cli_status_keys_files.py::test_sdk_file_name_round_trip_and_malformed_file_payload",
    ),
    "M-FILE-2": _tests(
        "tests/client/test_cli_status_keys_files.py::test_file_arrives_with_its_name_and_is_saved",
        "tests/client/test_cli_status_keys_files.py::test_hostile_file_names_stay_inside_the_directory",
        "tests/client/test_cli_status_keys_files.py::test_safe_file_name_rules",
    ),
    # --- §10 frames ---------------------------------------------------------------------------
    "M-FRM-1": _tests(
        "tests/protocol/test_frames.py::test_every_truncation_rejected",
        "tests/protocol/test_frames.py::test_trailing_byte_rejected",
        "tests/protocol/test_frames.py::test_unknown_or_missing_type_rejected",
        "tests/protocol/test_frames.py::test_frame_larger_than_max_frame_rejected",
        "tests/protocol/test_frames.py::test_send_envelope_bounds",
        "tests/protocol/test_frames.py::test_bundle_reserved_flag_bits_rejected",
        "tests/protocol/test_frames.py::test_bundle_size_bounds",
        "tests/protocol/test_frames.py::test_upload_prekeys_count_bounds",
        "tests/protocol/test_frames.py::test_upload_prekeys_count_mismatch",
        "tests/protocol/test_frames.py::test_upload_prekeys_duplicate_ids_rejected",
        "tests/protocol/test_frames.py::test_error_code_charset_and_length",
        "tests/protocol/test_frames.py::test_error_length_limits",
        "tests/protocol/test_frames.py::test_error_reason_bad_utf8_rejected",
        "tests/protocol/test_frames.py::test_arbitrary_bytes_rejected_or_canonical",
        "tests/protocol/test_frames.py::test_mutated_frames_rejected_or_canonical",
    ),
    "M-FRM-2": RELAY_AND_CLIENT,
    # Protocol part: an unknown code decodes ("x" is not an ErrorCode) and known_code says
    # so. Treating it as a generic failure of the request is the client's.
    "M-FRM-3": _tests(
        "tests/protocol/test_frames.py::test_decode_literal[error-min]",
        "tests/protocol/test_frames.py::test_error_code_enum_stored_as_plain_str",
    ),
    # SPEC.md calls this relay-only, "frames.py accepts the id", but frames.py refuses it at
    # construction and decoding, so the relay's decode already yields malformed_frame.
    "M-FRM-4": _tests(
        "tests/protocol/test_frames.py::test_upload_prekeys_reserved_id_refused",
    ),
    "M-FRM-5": RELAY_AND_CLIENT,
    "M-FRM-6": RELAY,
    # --- §11 relay and client duties ----------------------------------------------------------
    **{f"M-REL-{n}": RELAY for n in range(1, 21)},
    **{f"M-CLI-{n}": CLIENT for n in (*range(1, 6), 7)},
    "M-CLI-6": _tests(
        "tests/client/test_display.py::test_every_control_is_made_visible",
        "tests/client/test_display.py::test_the_issue_forgery_shows_as_one_routine_line",
        "tests/client/test_display.py::test_body_lines_cannot_look_like_headers",
        "tests/client/test_display.py::test_no_input_can_break_out_of_its_message",
        "tests/client/test_display.py::"
        "test_listen_shows_a_hostile_peer_harmlessly_and_json_stays_exact",
    ),
}
