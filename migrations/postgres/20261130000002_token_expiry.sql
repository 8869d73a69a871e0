-- API tokens may expire: unix milliseconds after which the token is refused (NULL: never).
ALTER TABLE api_tokens ADD COLUMN expires_ms BIGINT;
