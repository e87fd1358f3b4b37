"""The C-STORE data phase: P-DATA read into the incoming file, the header walked as it arrives."""
