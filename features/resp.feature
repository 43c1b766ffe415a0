@resp
Feature: The same store over the Redis protocol
  With --resp-port set, kvservice also speaks RESP2, on the same store as HTTP: a Redis
  client and curl see the same values, the same history and the same errors.

  Scenario: A value written over HTTP is read over RESP, and the other way round
    When I PUT "from http" to /cross
    Then over RESP, GET cross answers "from http"
    When over RESP I SET cross to "from redis"
    And I GET /cross
    Then the body is "from redis"
    And the header Content-Type is "application/octet-stream"
    When over RESP I DEL cross
    And I GET /cross
    Then the status is 404
    When I GET /cross/history
    Then the history values are [null, "from redis", "from http"]
    And over RESP, HISTORY cross lists the same entries as HTTP

  Scenario: Create-only writes agree across transports
    Given /taken holds "first"
    When over RESP I SET taken to "second" only if it has no value
    Then the RESP reply is nil
    And over RESP, GET taken answers "first"

  Scenario: A refused key is refused in the same words
    When I PUT "v" to /bad-key
    And over RESP I SET bad-key to "v"
    Then the RESP error is INVALIDKEY with the HTTP problem's detail

  Scenario Outline: The test client's checks pass over RESP
    When the test client runs <check> over RESP
    Then the check passed over RESP, skipping <skipped> steps

    Examples:
      | check              | skipped |
      | test_deletion      | 0       |
      | test_overwrite     | 0       |
      | test_history       | 0       |
      | test_create_only   | 0       |
      | test_validation    | 1       |
      | test_binary_values | 1       |
      | test_listing       | 0       |
      | test_expiry        | 1       |

  Scenario Outline: Checks that need what RESP cannot carry are skipped, saying why
    When the test client runs <check> over RESP
    Then the check was skipped over RESP because "<reason>"

    Examples:
      | check                   | reason                                                   |
      | test_conditional_writes | this transport has no versions to condition writes on    |
      | test_content_types      | this transport has no content types                      |
