"""The data messages an agent session sends to the room (payload shapes the demo page reads,
sfu/static/demo/agent.html), and the one it takes.

- topic "transcript":   {id, speaker: "user"|"agent", identity, language, final, text, turn,
                         timings_ms (agent lines), interrupted + heard (after a barge-in)}
- topic "agent_state":  {state: "listening"|"thinking"|"speaking"|"interrupted", turn}
- topic "interruption": {kind: "barge_in"|"backchannel"|"ignored_noise", speaker, voiced_ms,
                         turn; barge_in: heard_text, heard_ms, total_ms, stopped_frames;
                         backchannel/ignored_noise after a pause: text, paused_ms}
- topic "tool_result":  {name, args, result, turn}
- topic "ask" (from buyers): {text, language?}: a typed question, answered by voice too
"""

TOPIC_TRANSCRIPT = "transcript"
TOPIC_STATE = "agent_state"
TOPIC_INTERRUPTION = "interruption"
TOPIC_TOOL = "tool_result"
TOPIC_ASK = "ask"
