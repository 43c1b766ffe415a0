Feature: Storing and reading values
  As a user with curl, I store raw bytes under a key, read them back exactly,
  and get a clear, machine-readable error when I ask for something wrong.

  Scenario: The brief's six example requests
    When I PUT "hello world!" to /foo
    Then the status is 204
    And the body is empty
    When I GET /foo
    Then the status is 200
    And the body is "hello world!"
    And the header Content-Length is "12"
    When I GET /foo/history
    Then the status is 200
    And the header Content-Type is "application/json"
    And the header Content-Length is "52"
    And the body matches \[\{"value":"hello world!","timestamp":\d{13}\}\]
    When I DELETE /foo
    Then the status is 204
    When I GET /foo
    Then the status is 404
    And the answer is a "key-not-found" problem saying "has no value"
    When I GET /foo/history
    Then the status is 200
    And the body matches \[\{"value":null,"timestamp":\d{13}\},\{"value":"hello world!","timestamp":\d{13}\}\]

  Scenario: A value keeps the content type it was written with
    When I PUT "<p>hi</p>" to /page as "text/html; charset=utf-8"
    And I GET /page
    Then the body is "<p>hi</p>"
    And the header Content-Type is "text/html; charset=utf-8"
    And the header X-Content-Type-Options is "nosniff"

  Scenario: JSON values round-trip with their media type
    When I PUT "{"debug": true}" to /settings as "application/json"
    Then the status is 204
    When I GET /settings
    Then the body is "{"debug": true}"
    And the header Content-Type is "application/json"

  Scenario: A value declared as JSON must be JSON
    Given /settings holds "kept"
    When I PUT "{not json" to /settings as "application/json"
    Then the status is 400
    And the answer is a "bad-request" problem saying "not valid UTF-8 JSON"
    When I GET /settings
    Then the body is "kept"

  Scenario: Binary values are stored byte for byte
    When I PUT the bytes 00ff10fe80c0 to /blob
    And I GET /blob
    Then the body is the bytes 00ff10fe80c0
    And the header Content-Type is "application/octet-stream"
    When I GET /blob/history
    Then the history values are ["AP8Q/oDA"]

  Scenario: Values up to 1024 bytes are accepted, larger ones are refused
    When I PUT 1024 bytes to /big
    Then the status is 204
    When I PUT 1025 bytes to /big
    Then the status is 413
    And the answer is a "value-too-large" problem saying "The value is 1025 bytes; the limit is 1024 bytes."
    When I GET /big
    Then the header Content-Length is "1024"
