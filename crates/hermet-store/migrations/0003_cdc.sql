-- CDC: channel updates carry their before image, so a consumer can tell a new message
-- (`last_seq` moved) from a rename (`channel_info_ver` moved) without re-reading every member
-- row. Channels rows are small; the extra WAL per update is a few dozen bytes.
ALTER TABLE channels REPLICA IDENTITY FULL;
