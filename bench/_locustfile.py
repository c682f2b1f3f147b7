"""The Locust user for bench.ingress: POST the V2 echo request, no wait time (a closed loop per user).

Run only by bench._harness.run_locust, in a process of its own.
"""

from locust import FastHttpUser, task

from bench._payloads import ECHO_BODY, ECHO_PATH, JSON_HEADERS


class EchoUser(FastHttpUser):
    @task
    def infer(self) -> None:
        with self.client.post(
            ECHO_PATH, data=ECHO_BODY, headers=JSON_HEADERS, name="v2 echo infer", catch_response=True
        ) as resp:
            # A substring test, not a JSON parse: the generator's CPU is the scarcest thing on this box.
            if resp.status_code != 200 or b'"outputs"' not in (resp.content or b""):
                resp.failure(f"status {resp.status_code}: {(resp.content or b'')[:120]!r}")
