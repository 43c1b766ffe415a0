Feature: Create-only and conditional writes
  POST creates a key only if it has no value; ETags with If-Match and If-None-Match
  make read-modify-write safe.

  Scenario: POST creates a key once
    When I POST "first" to /job
    Then the status is 201
    And the header Location names /job
    And the header ETag is present
    When I POST "second" to /job
    Then the status is 409
    And the answer is a "key-exists" problem saying "already has a value"
    When I GET /job
    Then the body is "first"

  Scenario: If-Match succeeds only against the current ETag
    When I PUT "v1" to /doc
    And I remember the ETag
    And I PUT "v2" to /doc with If-Match set to the remembered ETag
    Then the status is 204
    And the ETag differs from the remembered one
    When I PUT "v3" to /doc with If-Match set to the remembered ETag
    Then the status is 412
    And the answer is a "precondition-failed" problem saying "does not hold"
    When I DELETE /doc with If-Match set to the remembered ETag
    Then the status is 412
    When I GET /doc
    Then the body is "v2"

  Scenario: If-None-Match * makes PUT create-only
    When I PUT "mine" to /lock with If-None-Match "*"
    Then the status is 204
    When I PUT "yours" to /lock with If-None-Match "*"
    Then the status is 412
    When I GET /lock
    Then the body is "mine"
