@tokens
Feature: Tokens decide who may read and who may write
  Started with --auth-tokens, kvservice serves only clients that present a token from its
  file: a read token reads, a write token also writes; without one, only /_health answers.

  Scenario: Without a token nothing is read or written
    Given I hold the write token
    And /guarded holds "secret"
    And I hold no token
    When I GET /guarded
    Then the status is 401
    And the header WWW-Authenticate is "Bearer realm="kvservice""
    And the answer is a "unauthorized" problem saying "needs a token"
    When I PUT "overwritten" to /guarded
    Then the status is 401
    Given I hold the read token
    When I GET /guarded
    Then the body is "secret"

  Scenario: A read token reads and cannot write
    Given I hold the write token
    And /readonly holds "kept"
    And I hold the read token
    When I PUT "changed" to /readonly
    Then the status is 403
    And the answer is a "forbidden" problem saying "may read, not write"
    When I DELETE /readonly
    Then the status is 403
    When I GET /readonly
    Then the body is "kept"

  Scenario: A token that differs in one character is refused; the liveness probe is open
    Given I hold a token the service does not know
    When I GET /_keys
    Then the status is 401
    And the header WWW-Authenticate is "Bearer realm="kvservice", error="invalid_token""
    When I GET /_health
    Then the status is 200
