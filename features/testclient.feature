Feature: The test client proves a running kvservice behaves
  An operator points the test client at a kvservice and asks, over HTTP,
  whether each promise holds.

  Scenario: The index lists every check and the kvservice it tests
    When I open the test client's index
    Then the status is 200
    And the index lists test_deletion, test_overwrite, test_history, test_create_only, test_conditional_writes, test_validation, test_binary_values, test_content_types, test_listing, test_tokens, test_all
    And the index names the kvservice under test

  Scenario Outline: Each check passes against the running kvservice
    When I run the test client's /<check>
    Then the status is 200
    And the check <check> passed with every step

    Examples:
      | check                   |
      | test_deletion           |
      | test_overwrite          |
      | test_history            |
      | test_create_only        |
      | test_conditional_writes |
      | test_validation         |
      | test_binary_values      |
      | test_content_types      |
      | test_listing            |

  Scenario: All checks at once
    When I run the test client's /test_all
    Then the status is 200
    And every check in the results passed

  Scenario: An unknown check is a clear error
    When I run the test client's /test_nothing
    Then the status is 404
    And the header Content-Type is "application/problem+json"
