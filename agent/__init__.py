"""The conversational agent (joins rooms as a participant). Built in the agent issue."""
